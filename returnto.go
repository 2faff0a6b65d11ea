package pliro

import (
	"net/url"
	"strings"
)

// maxReturnToLen bounds the return-to path kept through a sign-in.
const maxReturnToLen = 2048

// safeReturnTo accepts a place to send the browser after sign-in or sign-out
// only if it is a path on this site, and returns it in canonical form. It
// refuses everything a browser could read as another origin, which would make
// the site an open redirector (RFC 9700 §4.11, OWASP "Unvalidated Redirects"):
//   - absolute URLs ("https://evil.example") and scheme-relative ones
//     ("//evil.example");
//   - backslashes, which browsers treat as slashes ("/\evil.example");
//   - control characters and spaces, which browsers strip ("/\t/evil.example");
//   - percent-encoded variants that decode to any of the above.
func safeReturnTo(raw string) (string, bool) {
	if raw == "" || len(raw) > maxReturnToLen || raw[0] != '/' {
		return "", false
	}
	if strings.HasPrefix(raw, "//") || strings.ContainsRune(raw, '\\') || hasControlOrSpace(raw) {
		return "", false
	}
	u, err := url.Parse(raw)
	if err != nil || u.Scheme != "" || u.Host != "" || u.User != nil || u.Opaque != "" {
		return "", false
	}
	// Check the decoded path too: some servers and frameworks decode before
	// redirecting again.
	if strings.HasPrefix(u.Path, "//") || strings.ContainsRune(u.Path, '\\') || hasControlOrSpace(u.Path) {
		return "", false
	}
	if dec, err := url.PathUnescape(u.EscapedPath()); err != nil || strings.HasPrefix(dec, "//") {
		return "", false
	}
	u.Fragment, u.RawFragment = "", ""
	// url.URL re-encodes the path but keeps the query as it came; encode its
	// non-ASCII bytes as browsers do (WHATWG URL, query percent-encode set), so
	// the Location header is plain ASCII and carries no C1 control character.
	u.RawQuery = percentEncodeNonASCII(u.RawQuery)
	return u.String(), true
}

func percentEncodeNonASCII(s string) string {
	const hex = "0123456789ABCDEF"
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if c := s[i]; c >= 0x80 {
			if b.Len() == 0 {
				b.Grow(len(s) + 16)
				b.WriteString(s[:i])
			}
			b.WriteByte('%')
			b.WriteByte(hex[c>>4])
			b.WriteByte(hex[c&0xf])
		} else if b.Len() > 0 {
			b.WriteByte(c)
		}
	}
	if b.Len() == 0 {
		return s
	}
	return b.String()
}

func hasControlOrSpace(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] <= ' ' || s[i] == 0x7f {
			return true
		}
	}
	return false
}
