package config

import "github.com/kube-preloader/kube-preloader/yamlpos"

func (p *parser) syntaxError(err error, data []byte) {
	line, msg := yamlpos.SyntaxError(err, data)
	p.add(line, "invalid YAML: "+msg)
}
