package main

import (
	"fmt"
	"math/big"
	"regexp"
)

// minPartSize keeps --max-part-size from making thousands of files out
// of a typo (4 for 4Gi).
const minPartSize = 1 << 20

var sizeRe = regexp.MustCompile(`^([0-9]+(?:\.[0-9]+)?)(k|K|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?(B?)$`)

var sizeUnits = map[string]int64{
	"": 1, "k": 1e3, "K": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15, "E": 1e18,
	"Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30, "Ti": 1 << 40, "Pi": 1 << 50, "Ei": 1 << 60,
}

// parseSize reads a size in bytes: a number, with a decimal (k, M, G, T,
// P, E) or binary (Ki, Mi, Gi, Ti, Pi, Ei) unit as Kubernetes quantities
// have them, optionally followed by B (4GiB, 500MB).
func parseSize(s string) (int64, error) {
	m := sizeRe.FindStringSubmatch(s)
	if m == nil {
		return 0, fmt.Errorf("%q is not a size: want bytes, or a number with a unit such as 500Mi, 4G or 4GiB", s)
	}
	n, ok := new(big.Rat).SetString(m[1])
	if !ok {
		return 0, fmt.Errorf("%q is not a size", s)
	}
	n.Mul(n, new(big.Rat).SetInt64(sizeUnits[m[2]]))
	if !n.IsInt() {
		return 0, fmt.Errorf("%q is not a whole number of bytes", s)
	}
	if !n.Num().IsInt64() {
		return 0, fmt.Errorf("%q is too large", s)
	}
	v := n.Num().Int64()
	if v < minPartSize {
		return 0, fmt.Errorf("%q is %d bytes, less than the smallest part, 1Mi", s, v)
	}
	return v, nil
}
