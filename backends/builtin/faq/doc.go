// Package faq is Unigate's built-in FAQ bot: it answers visitors from a
// YAML knowledge base of intents (answers and example utterances in
// Chinese and English) and says how sure it is, so the gateway can hand
// the conversation to a human below its threshold.
//
//	bot, err := faq.New(nil) // the embedded sample knowledge base
//	a, _ := bot.Answer(ctx, backends.AnswerRequest{Text: "发票怎么开"})
//	// a.Intent "billing/invoice", a.Confidence ≈ 0.99, a.Text the answer
//
// How it decides:
//
//   - Text is normalised (lower case, full-width folded, punctuation
//     dropped). Runs of Chinese characters are segmented with go-ego/gse
//     (a frequency-ranked subset of its dictionary is embedded, see
//     internal/gendict) and contribute gse's words, character bigrams and
//     characters; Latin-script runs contribute words, word bigrams and
//     character trigrams. Knowledge-base Words count as single features.
//   - A TF-IDF model over the examples scores every intent by cosine
//     similarity (centroid and nearest example, mixed by a weight chosen by
//     leave-one-out accuracy). The confidence is a Platt (logistic)
//     calibration of the best score and its margin over the runner-up,
//     fitted on leave-one-out predictions of the examples plus the
//     knowledge base's out-of-scope utterances. `unigate bot eval` checks it
//     on a held-out labelled set (reliability table, expected calibration
//     error).
//   - A "human please" detector (built-in Chinese and English phrases plus
//     the knowledge base's) always hands off; so do intents marked handoff.
//   - The answer is in the language of the visitor's text, else their
//     declared language, else the knowledge base's default.
//
// Concurrency and ownership: a Bot is immutable after New and safe for
// concurrent use; Answer and Classify never block and keep nothing of
// their arguments. Classify allocates nothing for text without Chinese
// characters (per-call scratch comes from a sync.Pool). The gse segmenter
// is shared by every Bot of the process and loaded once, on the first New
// (~0.3 s, ~20 MiB). Only the first 1 KiB of a message is classified.
package faq
