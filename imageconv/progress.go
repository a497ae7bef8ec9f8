package imageconv

// Progress receives progress of long steps. Phase starts a step expected
// to process total bytes (0 if unknown); Advance reports n more bytes done.
// Calls come from one goroutine at a time.
type Progress interface {
	Phase(name string, total int64)
	Advance(n int64)
}

type noProgress struct{}

func (noProgress) Phase(string, int64) {}
func (noProgress) Advance(int64)       {}
