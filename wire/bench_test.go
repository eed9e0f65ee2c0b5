package wire

import (
	"math/rand/v2"
	"strconv"
	"testing"
)

// bigRequest is a request for n atoms (2.4 MB at 100k atoms).
func bigRequest(n int) *CalcRequest {
	rng := rand.New(rand.NewPCG(1, 2))
	numbers := make([]int32, n)
	positions := make([]float64, 3*n)
	for i := range numbers {
		numbers[i] = int32(1 + rng.IntN(90))
	}
	for i := range positions {
		positions[i] = 100 * rng.Float64()
	}
	cell := []float64{100, 0, 0, 0, 100, 0, 0, 0, 100}
	return NewCalcRequest(numbers, positions, cell, [3]bool{true, true, true}, "energy", "forces", "stress")
}

func benchSizes() []int { return []int{1, 1000, 100_000} }

func BenchmarkDecodeRequest(b *testing.B) {
	for _, n := range benchSizes() {
		payload := mustEncodeRequest(b, bigRequest(n))
		b.Run(strconv.Itoa(n)+"atoms", func(b *testing.B) {
			b.SetBytes(int64(len(payload)))
			b.ReportAllocs()
			for b.Loop() {
				if _, err := DecodeRequest(payload); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func BenchmarkEncodeRequest(b *testing.B) {
	for _, n := range benchSizes() {
		r := bigRequest(n)
		b.Run(strconv.Itoa(n)+"atoms", func(b *testing.B) {
			buf := make([]byte, 0, 64+28*n)
			b.SetBytes(int64(len(mustEncodeRequest(b, r))))
			b.ReportAllocs()
			for b.Loop() {
				var err error
				if buf, err = r.AppendTo(buf[:0]); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func BenchmarkDecodeResponse(b *testing.B) {
	for _, n := range benchSizes() {
		r := &CalcResponse{Success: true, Results: map[string]any{"energy": -1.5, "forces": make([]byte, 24*n), "stress": make([]byte, 48)}}
		payload := mustEncodeResponse(b, r)
		b.Run(strconv.Itoa(n)+"atoms", func(b *testing.B) {
			b.SetBytes(int64(len(payload)))
			b.ReportAllocs()
			for b.Loop() {
				if _, err := DecodeResponse(payload); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func BenchmarkErrorResponse(b *testing.B) {
	b.ReportAllocs()
	for b.Loop() {
		_ = ErrorResponse("No workers available for calculator 'EMT'")
	}
}
