package faq

import (
	"math"
	"slices"
	"sync"
	"unicode/utf8"

	"github.com/go-ego/gse"
)

// The classifier: every example utterance is a TF-IDF vector over the
// features of text.go (sublinear term frequency, smoothed IDF, a weight
// per feature family, L2-normalised). An intent's score for a query is
//
//	alpha × (cosine with its nearest example) + (1−alpha) × (cosine with its centroid)
//
// where the centroid is the normalised sum of its examples' vectors.
// alpha is chosen by leave-one-out accuracy over the examples. The
// confidence is a logistic (Platt) calibration of the best score and its
// margin over the second best intent, fitted on the same leave-one-out
// predictions plus the out-of-scope utterances (always wrong to answer),
// so that a confidence of 0.8 means "right about 80% of the time".
//
// Scoring a query walks inverted indexes (feature → examples, feature →
// centroids) into pooled dense accumulators: apart from gse's own
// allocations for Chinese text it allocates nothing.

type posting struct {
	doc int32
	w   float32
}

type model struct {
	vocab     map[string]int32
	weight    []float32 // per feature: family weight × IDF
	unknown   [numFams]float32
	docPost   [][]posting // per feature: examples
	cenPost   [][]posting // per feature: intent centroids
	docIntent []int32
	nIntents  int
	alpha     float32
	cal       calibration
	phrases   [][]byte
	// looAccuracy is the leave-one-out accuracy over the examples.
	looAccuracy float64
	seg         *gse.Segmenter
	pool        sync.Pool // *scratch
}

// scratch is the per-call working memory of a classification.
type scratch struct {
	norm    []byte
	f       featurizer
	qid     []int32
	qw      []float32
	tf      []float32 // dense over the vocabulary, zeroed after use
	docS    []float32 // dense over examples
	cenS    []float32 // dense over intents
	nn      []float32 // dense over intents
	touched []int32
}

// scores is a classification before the handoff rules.
type scores struct {
	best, second     int // intent indexes; -1 when none
	s1, s2           float64
	han, latin, norm int
}

// buildModel trains on kb. docs are the examples; labels their intents.
func buildModel(kb *KB, sg *gse.Segmenter) *model {
	m := &model{vocab: make(map[string]int32), nIntents: len(kb.Intents), seg: sg}
	var phrases []string
	for _, w := range kb.Words {
		phrases = append(phrases, normalizePhrase(w))
	}
	slices.Sort(phrases)
	for _, p := range slices.Compact(phrases) {
		m.phrases = append(m.phrases, []byte(p))
	}

	// Features of every example.
	var f featurizer
	type doc struct {
		intent int32
		zh     bool
		feats  map[int32]float32 // raw term frequency
	}
	var docs []doc
	var df []int
	featuresOf := func(text string) (map[int32]float32, bool) {
		norm, han, latin := normalize(nil, text)
		f.reset()
		f.featurize(norm, m.phrases, sg)
		tf := make(map[int32]float32, f.n())
		for i := 0; i < f.n(); i++ {
			k := string(f.key(i))
			id, ok := m.vocab[k]
			if !ok {
				id = int32(len(m.vocab))
				m.vocab[k] = id
				df = append(df, 0)
			}
			tf[id]++
		}
		return tf, detectLang(han, latin) == "zh"
	}
	for ii, in := range kb.Intents {
		for _, lang := range sortedKeys(in.Examples) {
			for _, ex := range in.Examples[lang] {
				tf, zh := featuresOf(ex)
				if len(tf) == 0 {
					continue
				}
				for id := range tf {
					df[id]++
				}
				docs = append(docs, doc{intent: int32(ii), zh: zh, feats: tf})
			}
		}
	}

	// Weights: family weight × smoothed IDF; unknown features get the IDF
	// of a feature seen in no example.
	n := float64(len(docs))
	m.weight = make([]float32, len(m.vocab))
	for k, id := range m.vocab {
		idf := math.Log((1+n)/(1+float64(df[id]))) + 1
		m.weight[id] = famWeights[famIndex(k[0])] * float32(idf)
	}
	unkIDF := float32(math.Log(1+n) + 1)
	for i := range m.unknown {
		m.unknown[i] = famWeights[i] * unkIDF
	}

	// Normalised example vectors, centroid sums, postings.
	vecs := make([][]posting, len(docs)) // posting.doc holds the feature id here
	m.docIntent = make([]int32, len(docs))
	sums := make([]map[int32]float64, m.nIntents)
	for i := range sums {
		sums[i] = make(map[int32]float64)
	}
	m.docPost = make([][]posting, len(m.vocab))
	for d, doc := range docs {
		m.docIntent[d] = doc.intent
		v := make([]posting, 0, len(doc.feats))
		var norm2 float64
		for id, tf := range doc.feats {
			v = append(v, posting{id, float32(1+math.Log(float64(tf))) * m.weight[id]})
		}
		// Feature order, not map order: the same KB always trains the
		// same model, to the last bit.
		slices.SortFunc(v, func(a, b posting) int { return int(a.doc - b.doc) })
		for _, p := range v {
			norm2 += float64(p.w) * float64(p.w)
		}
		inv := float32(1 / math.Sqrt(norm2))
		for k := range v {
			v[k].w *= inv
			m.docPost[v[k].doc] = append(m.docPost[v[k].doc], posting{int32(d), v[k].w})
			sums[doc.intent][v[k].doc] += float64(v[k].w)
		}
		vecs[d] = v
	}
	sumNorm := make([]float64, m.nIntents)
	m.cenPost = make([][]posting, len(m.vocab))
	for i, s := range sums {
		ids := make([]int32, 0, len(s))
		for id := range s {
			ids = append(ids, id)
		}
		slices.Sort(ids)
		var n2 float64
		for _, id := range ids {
			n2 += s[id] * s[id]
		}
		sumNorm[i] = math.Sqrt(n2)
		for id, w := range s {
			m.cenPost[id] = append(m.cenPost[id], posting{int32(i), float32(w / sumNorm[i])})
		}
	}

	// Leave-one-out: each example scored against the others (nearest
	// neighbour without itself, centroid without itself).
	type loo struct {
		nn, cen []float64
		intent  int
		zh      bool
	}
	loos := make([]loo, len(docs))
	for d := range docs {
		l := loo{nn: make([]float64, m.nIntents), cen: make([]float64, m.nIntents), intent: int(docs[d].intent), zh: docs[d].zh}
		docS := make([]float64, len(docs))
		for _, p := range vecs[d] {
			for _, q := range m.docPost[p.doc] {
				docS[q.doc] += float64(p.w) * float64(q.w)
			}
		}
		for e, s := range docS {
			if e != d && s > l.nn[docs[e].intent] {
				l.nn[docs[e].intent] = s
			}
		}
		for i := range l.cen {
			var dot float64
			for _, p := range vecs[d] {
				dot += float64(p.w) * sums[i][p.doc]
			}
			nrm := sumNorm[i]
			if i == l.intent { // remove the example itself: |S−v|² = |S|² − 2v·S + 1
				dot--
				nrm = math.Sqrt(math.Max(sumNorm[i]*sumNorm[i]-2*(dot+1)+1, 0))
			}
			if nrm > 1e-9 {
				l.cen[i] = dot / nrm
			}
		}
		loos[d] = l
	}

	// alpha: the best leave-one-out accuracy, ties to the middle.
	top2 := func(nn, cen []float64, alpha float64) (int, float64, float64) {
		best, s1, s2 := -1, 0.0, 0.0
		for i := range nn {
			s := alpha*nn[i] + (1-alpha)*cen[i]
			switch {
			case s > s1:
				best, s1, s2 = i, s, s1
			case s > s2:
				s2 = s
			}
		}
		return best, s1, s2
	}
	bestAlpha, bestAcc := 0.5, -1.0
	for _, a := range []float64{0.5, 0.4, 0.6, 0.3, 0.7, 0.2, 0.8, 0.1, 0.9, 0, 1} {
		ok := 0
		for _, l := range loos {
			if b, _, _ := top2(l.nn, l.cen, a); b == l.intent {
				ok++
			}
		}
		if acc := float64(ok) / float64(max(len(loos), 1)); acc > bestAcc+1e-9 {
			bestAlpha, bestAcc = a, acc
		}
	}
	m.alpha = float32(bestAlpha)

	// Calibration samples: leave-one-out predictions, then out-of-scope
	// utterances scored by the full model (never right to answer).
	var xs [][calFeatures]float64
	var ys []float64
	for _, l := range loos {
		b, s1, s2 := top2(l.nn, l.cen, bestAlpha)
		xs = append(xs, calX(s1, s2, l.zh))
		ys = append(ys, b2f(b == l.intent && b >= 0))
	}
	for _, lang := range sortedKeys(kb.OutOfScope) {
		for _, text := range kb.OutOfScope[lang] {
			sc := m.score(text)
			xs = append(xs, calX(sc.s1, sc.s2, detectLang(sc.han, sc.latin) == "zh"))
			ys = append(ys, 0)
		}
	}
	m.cal = fitCalibration(xs, ys)
	m.looAccuracy = bestAcc
	return m
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

func (m *model) getScratch() *scratch {
	if s, ok := m.pool.Get().(*scratch); ok {
		return s
	}
	return &scratch{
		tf:   make([]float32, len(m.vocab)),
		docS: make([]float32, len(m.docIntent)),
		cenS: make([]float32, m.nIntents),
		nn:   make([]float32, m.nIntents),
	}
}

// score classifies text: the best and second-best intents and scores.
func (m *model) score(text string) scores {
	s := m.getScratch()
	defer m.pool.Put(s)
	return m.scoreWith(s, text)
}

// maxClassifyBytes bounds the text classified: the rest of a very long
// message is ignored, which bounds a call's CPU time (gse's segmentation
// is superlinear on long Chinese runs).
const maxClassifyBytes = 1024

func (m *model) scoreWith(s *scratch, text string) scores {
	if len(text) > maxClassifyBytes {
		cut := maxClassifyBytes
		for cut > 0 && !utf8.RuneStart(text[cut]) {
			cut--
		}
		text = text[:cut]
	}
	var out scores
	out.best, out.second = -1, -1
	s.norm, out.han, out.latin = normalize(s.norm[:0], text)
	out.norm = len(s.norm)
	s.f.reset()
	s.f.featurize(s.norm, m.phrases, m.seg)

	// Query vector: sublinear TF × weight; unknown features count in the
	// norm only (each occurrence once), lowering the cosine of text the
	// knowledge base has never seen.
	s.touched = s.touched[:0]
	var unk2 float64
	for i := 0; i < s.f.n(); i++ {
		k := s.f.key(i)
		id, ok := m.vocab[string(k)]
		if !ok {
			u := float64(m.unknown[famIndex(k[0])])
			unk2 += u * u
			continue
		}
		if s.tf[id] == 0 {
			s.touched = append(s.touched, id)
		}
		s.tf[id]++
	}
	s.qid, s.qw = s.qid[:0], s.qw[:0]
	norm2 := unk2
	for _, id := range s.touched {
		w := (1 + float32(math.Log(float64(s.tf[id])))) * m.weight[id]
		s.tf[id] = 0
		s.qid = append(s.qid, id)
		s.qw = append(s.qw, w)
		norm2 += float64(w) * float64(w)
	}
	if len(s.qid) == 0 || norm2 == 0 {
		return out
	}
	inv := float32(1 / math.Sqrt(norm2))

	clear(s.docS)
	clear(s.cenS)
	clear(s.nn)
	for k, id := range s.qid {
		w := s.qw[k] * inv
		for _, p := range m.docPost[id] {
			s.docS[p.doc] += w * p.w
		}
		for _, p := range m.cenPost[id] {
			s.cenS[p.doc] += w * p.w
		}
	}
	for d, v := range s.docS {
		if in := m.docIntent[d]; v > s.nn[in] {
			s.nn[in] = v
		}
	}
	a := m.alpha
	for i := range s.nn {
		v := float64(a*s.nn[i] + (1-a)*s.cenS[i])
		switch {
		case v > out.s1:
			out.second, out.s2 = out.best, out.s1
			out.best, out.s1 = i, v
		case v > out.s2:
			out.second, out.s2 = i, v
		}
	}
	return out
}

// ---- calibration ----

const calFeatures = 4 // best score, margin, Chinese, bias

type calibration struct{ w [calFeatures]float64 }

func calX(s1, s2 float64, zh bool) [calFeatures]float64 {
	return [calFeatures]float64{s1, s1 - s2, b2f(zh), 1}
}

func sigmoid(z float64) float64 { return 1 / (1 + math.Exp(-z)) }

// prob is the calibrated probability that the best intent is right.
func (c calibration) prob(s1, s2 float64, zh bool) float64 {
	if s1 <= 0 {
		return 0
	}
	x := calX(s1, s2, zh)
	var z float64
	for i := range x {
		z += c.w[i] * x[i]
	}
	return sigmoid(z)
}

// fitCalibration fits a logistic regression by Newton's method with a
// small L2 penalty on the non-bias weights (which keeps it finite when the
// samples are separable). Targets are smoothed as in Platt (1999) so that
// a handful of samples cannot claim certainty.
func fitCalibration(xs [][calFeatures]float64, ys []float64) calibration {
	const lambda = 0.01
	var c calibration
	if len(xs) == 0 {
		c.w = [calFeatures]float64{4, 4, 0, -2} // an untrained guess: sigmoid(4·s + 4·margin − 2)
		return c
	}
	var npos, nneg float64
	for _, y := range ys {
		if y > 0.5 {
			npos++
		} else {
			nneg++
		}
	}
	hi, lo := (npos+1)/(npos+2), 1/(nneg+2)
	t := make([]float64, len(ys))
	for i, y := range ys {
		if y > 0.5 {
			t[i] = hi
		} else {
			t[i] = lo
		}
	}
	for iter := 0; iter < 50; iter++ {
		var g [calFeatures]float64
		var h [calFeatures][calFeatures]float64
		for i, x := range xs {
			var z float64
			for k := range x {
				z += c.w[k] * x[k]
			}
			p := sigmoid(z)
			for k := range x {
				g[k] += (p - t[i]) * x[k]
				for l := range x {
					h[k][l] += p * (1 - p) * x[k] * x[l]
				}
			}
		}
		for k := 0; k < calFeatures-1; k++ {
			g[k] += lambda * c.w[k]
			h[k][k] += lambda
		}
		h[calFeatures-1][calFeatures-1] += 1e-9
		step, ok := solve(h, g)
		if !ok {
			break
		}
		var size float64
		for k := range step {
			c.w[k] -= step[k]
			size += math.Abs(step[k])
		}
		if size < 1e-9 {
			break
		}
	}
	return c
}

// solve solves h·x = g by Gaussian elimination with partial pivoting.
func solve(h [calFeatures][calFeatures]float64, g [calFeatures]float64) ([calFeatures]float64, bool) {
	const n = calFeatures
	for col := 0; col < n; col++ {
		piv := col
		for r := col + 1; r < n; r++ {
			if math.Abs(h[r][col]) > math.Abs(h[piv][col]) {
				piv = r
			}
		}
		if math.Abs(h[piv][col]) < 1e-12 {
			return g, false
		}
		h[col], h[piv] = h[piv], h[col]
		g[col], g[piv] = g[piv], g[col]
		for r := col + 1; r < n; r++ {
			f := h[r][col] / h[col][col]
			for k := col; k < n; k++ {
				h[r][k] -= f * h[col][k]
			}
			g[r] -= f * g[col]
		}
	}
	var x [calFeatures]float64
	for r := n - 1; r >= 0; r-- {
		s := g[r]
		for k := r + 1; k < n; k++ {
			s -= h[r][k] * x[k]
		}
		x[r] = s / h[r][r]
	}
	return x, true
}
