package pliro

import (
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"testing"
)

// TestSafeReturnToRefusesOpenRedirects: return_to comes from the query
// string of a link anybody can craft. If the site redirected wherever it
// says after sign-in, an attacker could mail readers a genuine
// news.example.com/sign-in link that ends on a look-alike page asking for
// their card details (an open redirect, RFC 9700 §4.11). Every spelling a
// browser, or a server that decodes first, could read as another origin
// must be refused.
func TestSafeReturnToRefusesOpenRedirects(t *testing.T) {
	for _, tc := range []struct {
		name, raw string
	}{
		{"absolute URL", "https://evil.example"},
		{"absolute URL with path", "https://evil.example/sign-in"},
		{"scheme-relative", "//evil.example"},
		{"scheme-relative with path", "//evil.example/article"},
		{"three slashes", "///evil.example"},
		{"slash backslash", `/\evil.example`},
		{"two backslashes", `\\evil.example`},
		{"backslash later in the path", `/article\..\\evil.example`},
		{"encoded slashes", "/%2F%2Fevil.example"},
		{"encoded slashes, lower case", "/%2f%2fevil.example"},
		{"one encoded slash", "/%2Fevil.example"},
		{"encoded backslash", "/%5Cevil.example"},
		{"encoded backslash, lower case", "/%5cevil.example"},
		{"encoded tab", "/%09/evil.example"},
		{"encoded newline", "/%0A/evil.example"},
		{"encoded NUL", "/%00/evil.example"},
		{"real tab", "/\t/evil.example"},
		{"real newline", "/\n/evil.example"},
		{"leading space", " //evil.example"},
		{"space in the path", "/ /evil.example"},
		{"DEL", "/\x7f/evil.example"},
		{"javascript URL", "javascript:alert(1)"},
		{"data URL", "data:text/html,<script>alert(1)</script>"},
		{"header injection", "/path\r\nSet-Cookie:x"},
		{"encoded header injection", "/path%0D%0ASet-Cookie:x"},
		{"relative path", "article/7"},
		{"scheme without slashes", "https:evil.example"},
		{"scheme with backslashes", `https:\\evil.example`},
		{"bad escape", "/%zz"},
		{"empty", ""},
		{"over-long", "/" + strings.Repeat("a", maxReturnToLen)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got, ok := safeReturnTo(tc.raw); ok || got != "" {
				t.Errorf("safeReturnTo(%q) = %q, %v; want refused", tc.raw, got, ok)
			}
		})
	}
}

func TestSafeReturnToAccepts(t *testing.T) {
	for _, tc := range []struct {
		raw, want string
	}{
		{"/", "/"},
		{"/article/7?page=2", "/article/7?page=2"},
		{"/a%2Fb", "/a%2Fb"},
		{"/article/7#comments", "/article/7"},
		{"/article/7?page=2#comments", "/article/7?page=2"},
		{"/search?q=a+b&sort=new", "/search?q=a+b&sort=new"},
		{"/caf%C3%A9", "/caf%C3%A9"},
		{"/café", "/caf%C3%A9"},
		{"/search?q=café", "/search?q=caf%C3%A9"},
		{"/?\u008f", "/?%C2%8F"}, // a C1 control character in the query (found by FuzzSafeReturnTo)
		{"/members/", "/members/"},
		{"/a:b", "/a:b"},
		{"/?next=//evil.example", "/?next=//evil.example"}, // a query value is not a location
		{"/" + strings.Repeat("a", maxReturnToLen-1), "/" + strings.Repeat("a", maxReturnToLen-1)},
	} {
		t.Run(tc.raw, func(t *testing.T) {
			got, ok := safeReturnTo(tc.raw)
			if !ok || got != tc.want {
				t.Errorf("safeReturnTo(%q) = %q, %v; want %q, true", tc.raw, got, ok, tc.want)
			}
			checkReturnToInvariant(t, tc.raw, got)
		})
	}
}

// checkReturnToInvariant states what an accepted return-to guarantees,
// whatever the input.
func checkReturnToInvariant(t *testing.T, raw, out string) {
	t.Helper()
	if out != "/" && (len(out) < 2 || out[0] != '/' || out[1] == '/' || out[1] == '\\') {
		t.Fatalf("safeReturnTo(%q) = %q: not one slash then a path", raw, out)
	}
	if strings.ContainsRune(out, '\\') {
		t.Fatalf("safeReturnTo(%q) = %q: holds a backslash", raw, out)
	}
	for _, r := range out {
		if r < 0x20 || r == 0x7f || (r >= 0x80 && r < 0xa0) {
			t.Fatalf("safeReturnTo(%q) = %q: holds a control character", raw, out)
		}
	}
	u, err := url.Parse(out)
	if err != nil {
		t.Fatalf("safeReturnTo(%q) = %q: does not parse: %v", raw, out, err)
	}
	if u.Scheme != "" || u.Host != "" || u.User != nil || u.Opaque != "" {
		t.Fatalf("safeReturnTo(%q) = %q: parses with scheme %q host %q", raw, out, u.Scheme, u.Host)
	}
	base, _ := url.Parse("https://site.example/page")
	if r := base.ResolveReference(u); r.Scheme != "https" || r.Host != "site.example" {
		t.Fatalf("safeReturnTo(%q) = %q: resolves to %s", raw, out, r)
	}
	// Accepting is idempotent: the canonical form is accepted as it is
	// (unless percent-encoding made it longer than the limit).
	if again, ok := safeReturnTo(out); len(out) <= maxReturnToLen && (!ok || again != out) {
		t.Fatalf("safeReturnTo(%q) = %q, but safeReturnTo(%q) = %q, %v", raw, out, out, again, ok)
	}
}

func FuzzSafeReturnTo(f *testing.F) {
	for _, seed := range []string{
		"/", "/article/7?page=2", "/a%2Fb", "/article#x", "https://evil.example", "//evil.example",
		"///evil.example", `/\evil.example`, `\\evil.example`, "/%2F%2Fevil.example", "/%5Cevil.example",
		"/%09/evil.example", "/\t/evil.example", "javascript:alert(1)", "/path\r\nSet-Cookie:x",
		"/a/..//evil.example", "/.//evil.example", "/%2e%2e//evil.example", "/?//evil", "/#//evil",
		"/caf\u00e9", "/\u2215\u2215evil.example", "/\uff0f\uff0fevil.example", "/%E2%88%95evil", "",
	} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, raw string) {
		out, ok := safeReturnTo(raw)
		if !ok {
			if out != "" {
				t.Fatalf("refused %q but returned %q", raw, out)
			}
			return
		}
		checkReturnToInvariant(t, raw, out)
	})
}

// TestSignInFromDoubleSlashPathIsNotAnOpenRedirect: the page to come back to
// after a sign-in that a protected page (or auto sign-in) starts is the
// request's own URI. An attacker mails readers a genuine link,
// https://news.example.com//evil.example/, to a site where that path needs
// a signed-in reader. The reader signs in at Pliro as usual; were the
// return-to kept as it came, the site would answer Location: //evil.example/,
// which the browser reads as another host: a look-alike page asking for the
// password again. The browser must stay on the site.
func TestSignInFromDoubleSlashPathIsNotAnOpenRedirect(t *testing.T) {
	t.Setenv("PLIRO_RETURNTO_TEST_SECRET", testClientSecret)
	for _, tc := range []struct {
		name, directives string
	}{
		{"pliro_require on every path", "pliro_require"},
		{"auto sign-in", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := newTestProvider(t)
			extra := ""
			if tc.directives == "" {
				extra = "auto_sign_in 1d"
			}
			site := startCaddy(t, fmt.Sprintf(`
	pliro {
		issuer %s
		client_id %s
		client_secret {env.PLIRO_RETURNTO_TEST_SECRET}
		%s
	}
	%s
	respond "page"
`, p.issuer, p.clientID, extra, tc.directives))
			siteHost, providerHost := strings.TrimPrefix(site.base, "http://"), strings.TrimPrefix(p.issuer, "http://")
			b := newBrowser(t)
			for _, path := range []string{"//evil.example/", "//evil.example/members/x?y=1", "///evil.example/"} {
				resp := b.get(site.base + path)
				for hop := 0; resp.StatusCode >= 300 && resp.StatusCode < 400 && hop < 5; hop++ {
					next, err := resp.Request.URL.Parse(resp.Header.Get("Location"))
					if err != nil {
						t.Fatalf("%s: bad Location %q: %v", path, resp.Header.Get("Location"), err)
					}
					if next.Host != siteHost && next.Host != providerHost {
						t.Fatalf("%s: after sign-in the browser is sent to %s (Location %q)", path, next, resp.Header.Get("Location"))
					}
					resp = b.get(next.String())
				}
				if resp.StatusCode != http.StatusOK {
					t.Fatalf("%s: ended with %d %q", path, resp.StatusCode, resp.body)
				}
			}
		})
	}
}
