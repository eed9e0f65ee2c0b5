package pyhost

import (
	"errors"
	"strings"
)

// PyError is a Python exception carried into Go.
type PyError struct {
	// Type is the exception class as module.qualname, e.g. "builtins.KeyError".
	Type string `json:"type"`
	// Message is str(exception).
	Message string `json:"message"`
	// Traceback is traceback.format_exception(...) joined: the full text
	// Python would print, chained causes included. It may be empty when the
	// traceback itself could not be formatted.
	Traceback string `json:"traceback"`
}

// Error returns "Type: Message", like the last line of a Python traceback.
func (e *PyError) Error() string {
	if e.Message == "" {
		return e.Type
	}
	return e.Type + ": " + e.Message
}

// Is reports whether err is a *PyError of the given type ("builtins.SystemExit").
func Is(err error, pyType string) bool {
	var pe *PyError
	return errors.As(err, &pe) && pe.Type == pyType
}

// IsKeyboardInterrupt reports whether err is a Python KeyboardInterrupt.
func IsKeyboardInterrupt(err error) bool { return Is(err, "builtins.KeyboardInterrupt") }

// IsImportError reports whether err is an ImportError or ModuleNotFoundError.
func IsImportError(err error) bool {
	return Is(err, "builtins.ImportError") || Is(err, "builtins.ModuleNotFoundError")
}

// IsNotFound reports whether err says a calculator name resolved to nothing.
func IsNotFound(err error) bool {
	var pe *PyError
	return errors.As(err, &pe) && strings.HasSuffix(pe.Type, ".CalculatorNotFound")
}

var (
	// ErrStaticInterpreter means the interpreter has no shared libpython that
	// could be loaded; Open falls back to subprocess mode in ModeAuto.
	ErrStaticInterpreter = errors.New("static interpreter: no shared libpython found")
	// ErrClosed is returned by every call on a closed Host.
	ErrClosed = errors.New("pyhost: host closed")
	// ErrAlreadyEmbedded is returned when a second, different interpreter is
	// embedded: a process can hold exactly one libpython, initialised once.
	ErrAlreadyEmbedded = errors.New("pyhost: an interpreter is already embedded in this process")
)
