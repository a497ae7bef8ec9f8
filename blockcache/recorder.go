package blockcache

// recorder notes the order in which reads first touch chunks.
type recorder struct {
	seen  []bool
	order []int
}

func (r *recorder) note(first, last int) {
	for i := first; i <= last; i++ {
		if !r.seen[i] {
			r.seen[i] = true
			r.order = append(r.order, i)
		}
	}
}
