package bench

import "math"

// Fit is a least-squares line y = Slope·x + Intercept.
type Fit struct {
	Slope     float64 `json:"slope"`
	Intercept float64 `json:"intercept"`
	// R2 is the coefficient of determination (1: the points lie on the
	// line). NaN is reported as 0.
	R2     float64 `json:"r2"`
	Points int     `json:"points"`
}

// leastSquares fits a line through (xs[i], ys[i]). It needs two distinct
// x values; otherwise it returns a zero Fit with Points set.
func leastSquares(xs, ys []float64) Fit {
	n := min(len(xs), len(ys))
	f := Fit{Points: n}
	if n < 2 {
		return f
	}
	var sx, sy float64
	for i := range n {
		sx += xs[i]
		sy += ys[i]
	}
	mx, my := sx/float64(n), sy/float64(n)
	var sxx, sxy, syy float64
	for i := range n {
		dx, dy := xs[i]-mx, ys[i]-my
		sxx += dx * dx
		sxy += dx * dy
		syy += dy * dy
	}
	if sxx == 0 {
		return f
	}
	f.Slope = sxy / sxx
	f.Intercept = my - f.Slope*mx
	if syy > 0 {
		f.R2 = sxy * sxy / (sxx * syy)
	} else {
		f.R2 = 1
	}
	if math.IsNaN(f.R2) {
		f.R2 = 0
	}
	return f
}
