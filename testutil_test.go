package pliro

import "os"

func setenvOnce(name, value string) error { return os.Setenv(name, value) }
