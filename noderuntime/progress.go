package noderuntime

import "github.com/kube-preloader/kube-preloader/containerd"

// PullProgress is what the pulls in flight through containerd's client
// (PullDirect) have received and have to receive, in bytes.
type PullProgress struct {
	InFlight, Done, Total int64
}

// Progress is a Store whose pulls say how far they are while they run:
// containerd's, for PullDirect. A CRI PullImage is one blocking call that
// says nothing until it returns, so its pulls are in no Progress.
type Progress interface {
	PullProgress() PullProgress
}

// PullProgress asks the containerd client, which counts its pulls' bytes
// (*containerd.Client does); a Containerd that does not count reports
// zeros.
func (s *containerdStore) PullProgress() PullProgress {
	c, ok := s.ctrd.(interface {
		PullProgress() (inFlight, done, total int64)
	})
	if !ok {
		return PullProgress{}
	}
	var p PullProgress
	p.InFlight, p.Done, p.Total = c.PullProgress()
	return p
}

var _ Progress = (*containerdStore)(nil)

// The containerd client is what counts; a change of its signature must
// not silently turn the gauges to zeros.
var _ interface {
	PullProgress() (inFlight, done, total int64)
} = (*containerd.Client)(nil)
