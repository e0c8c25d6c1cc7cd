package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"

	"github.com/unigate/unigate/backends/builtin/faq"
)

const botUsage = `usage: unigate bot eval FILE [-kb KB.yaml] [-threshold 0.8] [-errors] [-json]
       unigate bot kb    print the embedded sample knowledge base

eval runs the built-in FAQ bot over a labelled set (JSON lines: text, lang,
expect = an intent id, "handoff" or "none") and prints accuracy, accuracy at
the threshold, the hand-off rate, calibration and a per-intent confusion
summary. Flags may follow FILE.
`

// botCmd is "unigate bot": tools for the built-in FAQ bot.
func botCmd(args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		fmt.Fprint(stderr, botUsage)
		return errUsage
	}
	switch args[0] {
	case "eval":
		return botEval(args[1:], stdout, stderr)
	case "kb":
		_, err := stdout.Write(faq.SampleKBYAML())
		return err
	case "help", "-h", "--help":
		fmt.Fprint(stdout, botUsage)
		return nil
	}
	fmt.Fprintf(stderr, "unigate bot: unknown subcommand %q\n\n%s", args[0], botUsage)
	return errUsage
}

func botEval(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("bot eval", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() { fmt.Fprint(stderr, botUsage); fs.PrintDefaults() }
	kbPath := fs.String("kb", "", "knowledge base `file` (default: the embedded sample)")
	threshold := fs.Float64("threshold", faq.DefaultThreshold, "confidence `threshold` at or above which the bot answers")
	listErrors := fs.Bool("errors", false, "list every utterance with a wrong decision")
	asJSON := fs.Bool("json", false, "print the report as JSON")
	// Accept flags before and after FILE: parse, take one positional, repeat.
	var files []string
	for {
		if err := fs.Parse(args); err != nil {
			return err
		}
		if fs.NArg() == 0 {
			break
		}
		files = append(files, fs.Arg(0))
		args = fs.Args()[1:]
	}
	if len(files) != 1 {
		fmt.Fprintf(stderr, "unigate bot eval: want exactly one labelled FILE, got %d\n\n", len(files))
		fs.Usage()
		return errUsage
	}
	if *threshold < 0 || *threshold > 1 {
		return fmt.Errorf("-threshold %v: want a value in 0..1", *threshold)
	}

	kb := faq.SampleKB()
	if *kbPath != "" {
		var err error
		if kb, err = faq.LoadKB(*kbPath); err != nil {
			return err
		}
	}
	f, err := os.Open(files[0])
	if err != nil {
		return err
	}
	defer f.Close()
	items, err := faq.ParseLabelled(f)
	if err != nil {
		return fmt.Errorf("%s: %w", files[0], err)
	}
	bot, err := faq.New(kb)
	if err != nil {
		return err
	}
	if err := bot.CheckLabels(items); err != nil {
		return fmt.Errorf("%s: %w", files[0], err)
	}
	rep := bot.Evaluate(items, *threshold)
	if *asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(rep)
	}
	return rep.WriteText(stdout, *listErrors)
}
