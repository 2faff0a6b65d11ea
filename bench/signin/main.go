// Command signin signs in to a site protected by the pliro handler the way a
// browser does, through the Pliro stand-in's login form (testenv/pliro), and
// prints the value of the session cookie. bench/run hands it to wrk.
//
//	signin -url http://127.0.0.1:8081/members/bench -email premium@example.com -password premium
//
// It opens the protected page as a navigation, follows the redirects to the
// stand-in's login form, posts the credentials, follows the redirects back
// through the module's callback to the page, and checks that the page was
// served to the signed-in customer (-want).
package main

import (
	"errors"
	"flag"
	"fmt"
	"html"
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/url"
	"os"
	"regexp"
	"strings"
	"time"
)

func main() {
	page := flag.String("url", "", "protected page of the site (required)")
	email := flag.String("email", "premium@example.com", "stand-in customer's email")
	password := flag.String("password", "premium", "stand-in customer's password")
	cookie := flag.String("cookie", "pliro_session", "name of the session cookie")
	want := flag.String("want", "", "text the signed-in page must contain")
	flag.Parse()
	if *page == "" {
		flag.Usage()
		os.Exit(2)
	}
	value, err := signIn(*page, *email, *password, *cookie, *want)
	if err != nil {
		fmt.Fprintln(os.Stderr, "signin:", err)
		os.Exit(1)
	}
	fmt.Println(value)
}

// formAction finds the login form's target in the stand-in's page.
var formAction = regexp.MustCompile(`<form[^>]*method="post"[^>]*action="([^"]+)"`)

func signIn(page, email, password, cookieName, want string) (string, error) {
	jar, _ := cookiejar.New(nil)
	client := &http.Client{Jar: jar, Timeout: 20 * time.Second}

	// 1. The protected page, as a navigation: the module sends the browser
	//    to the provider, which shows its login form.
	resp, body, err := navigate(client, http.MethodGet, page, nil)
	if err != nil {
		return "", err
	}
	m := formAction.FindStringSubmatch(body)
	if resp.StatusCode != http.StatusOK || m == nil {
		return "", fmt.Errorf("expected the provider's login form after %s, got %d at %s", page, resp.StatusCode, resp.Request.URL)
	}
	action, err := resp.Request.URL.Parse(html.UnescapeString(m[1]))
	if err != nil {
		return "", fmt.Errorf("login form action: %w", err)
	}

	// 2. The credentials: the provider redirects to the module's callback,
	//    which starts the session and returns to the page.
	form := url.Values{"email": {email}, "password": {password}}
	resp, body, err = navigate(client, http.MethodPost, action.String(), strings.NewReader(form.Encode()))
	if err != nil {
		return "", err
	}
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("signing in ended with %d at %s: %.200s", resp.StatusCode, resp.Request.URL, body)
	}
	if got := resp.Request.URL.String(); got != page {
		return "", fmt.Errorf("signing in ended at %s, not %s", got, page)
	}
	if want != "" && !strings.Contains(body, want) {
		return "", fmt.Errorf("the page after sign-in lacks %q: %.200s", want, body)
	}
	u, _ := url.Parse(page)
	for _, c := range jar.Cookies(u) {
		if c.Name == cookieName {
			return c.Value, nil
		}
	}
	return "", errors.New("no " + cookieName + " cookie after sign-in")
}

// navigate sends a browser-like request and follows redirects (the client
// carries the headers and the cookie jar along).
func navigate(client *http.Client, method, target string, body io.Reader) (*http.Response, string, error) {
	req, err := http.NewRequest(method, target, body)
	if err != nil {
		return nil, "", err
	}
	req.Header.Set("Accept", "text/html,application/xhtml+xml")
	req.Header.Set("Sec-Fetch-Mode", "navigate")
	req.Header.Set("Sec-Fetch-Dest", "document")
	if body != nil {
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	}
	resp, err := client.Do(req)
	if err != nil {
		return nil, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	return resp, string(b), err
}
