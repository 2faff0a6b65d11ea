// Command caddy is Caddy with its standard modules plus caddy-pliro, so that
// `go run ./cmd/caddy` or `go build ./cmd/caddy` gives a working server
// without xcaddy.
package main

import (
	caddycmd "github.com/caddyserver/caddy/v2/cmd"

	_ "github.com/caddyserver/caddy/v2/modules/standard"

	_ "github.com/pliro/caddy-pliro"
)

func main() {
	caddycmd.Main()
}
