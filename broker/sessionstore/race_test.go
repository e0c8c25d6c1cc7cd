//go:build race

package sessionstore

const raceEnabled = true
