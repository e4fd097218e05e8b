package main

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/spf13/cobra"
	"golang.org/x/crypto/bcrypt"
	"golang.org/x/term"
)

func passwdCmd() *cobra.Command {
	var cost int
	c := &cobra.Command{
		Use:   "passwd",
		Short: "Print a bcrypt hash of a password, for users: in onebox.yaml",
		Long: `passwd reads a password and prints its bcrypt hash, to paste (quoted) as a
user's password in onebox.yaml:

  users:
    alice: {password: "<hash>", publish: ["trigger/hello"], subscribe: ["result/+"]}

On a terminal the password is asked twice, without echo. Otherwise it is read
from stdin (one trailing newline is dropped):  echo -n 's3cret' | onebox passwd`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			pw, err := readPassword(os.Stdin, cmd.ErrOrStderr())
			if err != nil {
				return err
			}
			h, err := hashPassword(pw, cost)
			if err != nil {
				return err
			}
			fmt.Fprintln(cmd.OutOrStdout(), h)
			return nil
		},
	}
	c.Flags().IntVar(&cost, "cost", bcrypt.DefaultCost, "bcrypt cost (each step doubles the work of every check; 10 takes ~0.1s on a Pi 3)")
	return c
}

func hashPassword(pw []byte, cost int) (string, error) {
	if len(pw) == 0 {
		return "", errors.New("empty password: MQTT clients could not tell it from none")
	}
	if len(pw) > 72 {
		return "", fmt.Errorf("password of %d bytes: bcrypt takes at most 72", len(pw))
	}
	if cost < bcrypt.MinCost || cost > 16 {
		return "", fmt.Errorf("--cost %d: use %d to 16", cost, bcrypt.MinCost)
	}
	h, err := bcrypt.GenerateFromPassword(pw, cost)
	return string(h), err
}

// readPassword asks on the terminal (twice, no echo) or reads stdin.
func readPassword(in *os.File, prompt io.Writer) ([]byte, error) {
	fd := int(in.Fd())
	if !term.IsTerminal(fd) {
		b, err := io.ReadAll(io.LimitReader(in, 4096))
		if err != nil {
			return nil, err
		}
		b = bytes.TrimSuffix(b, []byte("\n"))
		return bytes.TrimSuffix(b, []byte("\r")), nil
	}
	fmt.Fprint(prompt, "Password: ")
	a, err := term.ReadPassword(fd)
	fmt.Fprintln(prompt)
	if err != nil {
		return nil, err
	}
	fmt.Fprint(prompt, "Again: ")
	b, err := term.ReadPassword(fd)
	fmt.Fprintln(prompt)
	if err != nil {
		return nil, err
	}
	if !bytes.Equal(a, b) {
		return nil, errors.New("the passwords differ")
	}
	return a, nil
}
