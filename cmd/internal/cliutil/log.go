package cliutil

import (
	"os"
	"time"

	"github.com/rs/zerolog"
	"golang.org/x/term"
)

// NewLogger returns a logger on stderr: human-readable on a terminal,
// JSON lines otherwise, at the given level ("debug", "info", ...).
func NewLogger(level string) (zerolog.Logger, error) {
	lvl, err := zerolog.ParseLevel(level)
	if err != nil {
		return zerolog.Nop(), err
	}
	var l zerolog.Logger
	if term.IsTerminal(int(os.Stderr.Fd())) {
		l = zerolog.New(zerolog.ConsoleWriter{Out: os.Stderr, TimeFormat: time.TimeOnly})
	} else {
		l = zerolog.New(os.Stderr)
	}
	return l.Level(lvl).With().Timestamp().Logger(), nil
}
