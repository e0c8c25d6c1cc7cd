package faq

import (
	"bytes"
	_ "embed"
	"fmt"
	"strings"
	"sync"
	"unicode"
	"unicode/utf8"

	"github.com/go-ego/gse"
)

// zhDict is the N most frequent words of gse's simplified-Chinese
// dictionary (see internal/gendict for why not all of it).
//
//go:generate go run ./internal/gendict -n 60000 -o zhdict.txt
//go:embed zhdict.txt
var zhDict string

// Feature families. A feature is its family byte followed by its text, so
// that one vocabulary holds them all apart.
const (
	famWord   = 'w' // a Latin-script word (digits-only words become "#")
	famBigram = 'b' // two consecutive Latin-script words
	famGram   = 'g' // a character trigram of a Latin-script word, ^ and $ marking its ends
	famZhWord = 'z' // a word of two or more Han characters, from gse
	famZhBi   = 'y' // two consecutive Han characters
	famZhChar = 'x' // one Han character
	famPhrase = 'p' // a knowledge-base phrase (KB.Words) found in the text
	numFams   = 7
)

// famIndex maps a family byte to 0..numFams-1.
func famIndex(f byte) int {
	switch f {
	case famWord:
		return 0
	case famBigram:
		return 1
	case famGram:
		return 2
	case famZhWord:
		return 3
	case famZhBi:
		return 4
	case famZhChar:
		return 5
	default:
		return 6
	}
}

// famWeights scale each family's TF-IDF weights before normalisation,
// indexed by famIndex. Chosen by a grid search on the leave-one-out
// accuracy over the sample knowledge base's examples (never on the
// held-out set); the accuracy varied by only ±2 points over the grid.
var famWeights = [numFams]float32{
	1.0,  // word
	0.25, // bigram
	0.5,  // gram
	1.0,  // zh word
	1.0,  // zh bigram
	0.3,  // zh char
	1.0,  // phrase
}

var (
	segOnce sync.Once
	segErr  error
	seg     gse.Segmenter
)

// segmenter returns the process-wide gse segmenter, loading the embedded
// dictionary on first use (~0.3 s, ~20 MiB). It is shared because gse's
// HMM model is a package-level map that gse rewrites whenever a segmenter
// is initialised: initialising one while another cuts would be a data
// race. After loading it is only read, which gse supports concurrently.
func segmenter() (*gse.Segmenter, error) {
	segOnce.Do(func() {
		seg.SkipLog = true
		segErr = seg.LoadDictStr(stripHeader(zhDict))
		if segErr == nil && seg.Dict.NumTokens() == 0 {
			segErr = fmt.Errorf("faq: the embedded Chinese dictionary is empty")
		}
	})
	return &seg, segErr
}

// stripHeader drops the leading '#' comment lines of a dictionary.
func stripHeader(d string) string {
	for strings.HasPrefix(d, "#") {
		i := strings.IndexByte(d, '\n')
		if i < 0 {
			return ""
		}
		d = d[i+1:]
	}
	return d
}

// isHan reports whether r is a Chinese character.
func isHan(r rune) bool { return unicode.Is(unicode.Han, r) }

// normalize appends to dst the text lower-cased, with full-width ASCII
// folded to half-width, apostrophes dropped ("don't" → "dont"), and every
// run of other non-letter, non-digit characters replaced by one space; no
// leading or trailing space. It also counts Han runes and other letters.
func normalize(dst []byte, s string) (out []byte, han, latin int) {
	space := true // suppress a leading space
	for _, r := range s {
		switch {
		case r >= 0xFF01 && r <= 0xFF5E: // full-width ASCII
			r -= 0xFEE0
		case r == 0x3000: // ideographic space
			r = ' '
		}
		switch {
		case r == '\'' || r == '’':
			continue
		case isHan(r):
			han++
		case unicode.IsLetter(r):
			latin++
			r = unicode.ToLower(r)
		case unicode.IsDigit(r):
		default:
			if !space {
				dst = append(dst, ' ')
				space = true
			}
			continue
		}
		dst = utf8.AppendRune(dst, r)
		space = false
	}
	if n := len(dst); n > 0 && dst[n-1] == ' ' {
		dst = dst[:n-1]
	}
	return dst, han, latin
}

// detectLang guesses the language of a text from its script counts:
// "zh", "en" (any other Latin-script letters), or "" when it has no
// letters at all.
func detectLang(han, latin int) string {
	switch {
	case han >= 2 || (han == 1 && latin == 0):
		return "zh"
	case latin > 0:
		return "en"
	}
	return ""
}

// featurizer turns normalised text into feature keys, all appended to one
// byte arena so that looking them up allocates nothing (Go does not
// allocate for m[string(b)]).
type featurizer struct {
	keys []byte
	ends []int32 // keys[ends[i-1]:ends[i]] is feature i
	tmp  []byte
}

func (f *featurizer) reset() {
	f.keys = f.keys[:0]
	f.ends = f.ends[:0]
}

func (f *featurizer) n() int { return len(f.ends) }

func (f *featurizer) key(i int) []byte {
	start := int32(0)
	if i > 0 {
		start = f.ends[i-1]
	}
	return f.keys[start:f.ends[i]]
}

func (f *featurizer) add(fam byte, parts ...[]byte) {
	f.keys = append(f.keys, fam)
	for _, p := range parts {
		f.keys = append(f.keys, p...)
	}
	f.ends = append(f.ends, int32(len(f.keys)))
}

// addStr is add for a string part, without converting it.
func (f *featurizer) addStr(fam byte, s string) {
	f.keys = append(f.keys, fam)
	f.keys = append(f.keys, s...)
	f.ends = append(f.ends, int32(len(f.keys)))
}

// featurize appends the features of norm (the output of normalize).
// phrases are matched as substrings of norm (KB.Words, normalised).
func (f *featurizer) featurize(norm []byte, phrases [][]byte, sg *gse.Segmenter) {
	var prev []byte // previous Latin-script word, for bigrams
	i := 0
	for i < len(norm) {
		r, size := utf8.DecodeRune(norm[i:])
		switch {
		case r == ' ':
			i += size
		case isHan(r):
			j := i + size
			for j < len(norm) {
				r2, s2 := utf8.DecodeRune(norm[j:])
				if !isHan(r2) {
					break
				}
				j += s2
			}
			f.han(norm[i:j], sg)
			prev = nil
			i = j
		default:
			j := i + size
			for j < len(norm) {
				r2, s2 := utf8.DecodeRune(norm[j:])
				if r2 == ' ' || isHan(r2) {
					break
				}
				j += s2
			}
			w := norm[i:j]
			if isDigits(w) {
				w = numToken
			} else {
				f.grams(w)
			}
			f.add(famWord, w)
			if prev != nil {
				f.add(famBigram, prev, space, w)
			}
			prev = w
			i = j
		}
	}
	for _, p := range phrases {
		if bytes.Contains(norm, p) {
			f.add(famPhrase, p)
		}
	}
}

var (
	numToken = []byte("#")
	space    = []byte(" ")
)

func isDigits(b []byte) bool {
	for _, c := range b {
		if c < '0' || c > '9' {
			return false
		}
	}
	return true
}

// grams adds the character trigrams of a word padded with ^ and $.
func (f *featurizer) grams(w []byte) {
	f.tmp = append(f.tmp[:0], '^')
	f.tmp = append(f.tmp, w...)
	f.tmp = append(f.tmp, '$')
	// Trigrams over runes, not bytes.
	var starts [64]int
	n := 0
	for i := range string(f.tmp) {
		if n == len(starts) {
			break
		}
		starts[n] = i
		n++
	}
	if n < 3 {
		f.add(famGram, f.tmp)
		return
	}
	for k := 0; k+2 < n; k++ {
		end := len(f.tmp)
		if k+3 < n {
			end = starts[k+3]
		}
		f.add(famGram, f.tmp[starts[k]:end])
	}
}

// han adds the features of a run of Han characters: its characters, its
// character bigrams and gse's words of two or more characters.
func (f *featurizer) han(run []byte, sg *gse.Segmenter) {
	var prevStart = -1
	for i, r := range string(run) {
		size := utf8.RuneLen(r)
		f.add(famZhChar, run[i:i+size])
		if prevStart >= 0 {
			f.add(famZhBi, run[prevStart:i+size])
		}
		prevStart = i
	}
	if sg == nil || utf8.RuneCount(run) < 2 {
		return
	}
	for _, w := range sg.Cut(string(run), true) {
		if utf8.RuneCountInString(w) >= 2 {
			f.addStr(famZhWord, w)
		}
	}
}

// normalizePhrase normalises a knowledge-base phrase or word the way
// visitor text is normalised, as a string.
func normalizePhrase(s string) string {
	b, _, _ := normalize(nil, s)
	return string(b)
}

// containsPhrase reports whether phrase occurs in norm; with words set the
// occurrence must start and end at word boundaries (spaces or the ends).
func containsPhrase(norm, phrase []byte, words bool) bool {
	if len(phrase) == 0 {
		return false
	}
	for off := 0; ; {
		i := bytes.Index(norm[off:], phrase)
		if i < 0 {
			return false
		}
		start, end := off+i, off+i+len(phrase)
		if !words || ((start == 0 || norm[start-1] == ' ') && (end == len(norm) || norm[end] == ' ')) {
			return true
		}
		off = start + 1
	}
}

// mask overwrites every occurrence of phrase in norm with spaces.
func mask(norm, phrase []byte) {
	if len(phrase) == 0 {
		return
	}
	for off := 0; ; {
		i := bytes.Index(norm[off:], phrase)
		if i < 0 {
			return
		}
		for k := off + i; k < off+i+len(phrase); k++ {
			norm[k] = ' '
		}
		off += i + len(phrase)
	}
}
