package main

import (
	"testing"
	"time"
)

func TestBackoff(t *testing.T) {
	b := backoff{min: 100 * time.Millisecond, max: time.Second, stable: 30 * time.Second}
	steps := []struct {
		ran  time.Duration
		want time.Duration
	}{
		{0, 100 * time.Millisecond}, // first exit
		{time.Second, 200 * time.Millisecond},
		{0, 400 * time.Millisecond},
		{0, 800 * time.Millisecond},
		{0, time.Second}, // capped
		{0, time.Second},
		{time.Minute, 100 * time.Millisecond}, // ran stably: start over
		{time.Second, 200 * time.Millisecond},
	}
	for i, s := range steps {
		if got := b.next(s.ran); got != s.want {
			t.Fatalf("step %d (ran %v): delay %v, want %v", i, s.ran, got, s.want)
		}
	}
}
