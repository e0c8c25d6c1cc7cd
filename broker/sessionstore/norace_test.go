//go:build !race

package sessionstore

const raceEnabled = false
