package cliutil

import (
	"context"

	"github.com/sluice-project/sluice/blockcache"
	"github.com/sluice-project/sluice/nbdserver"
)

// NBDExports publishes the images a source.Source opens as exports of an
// NBD server: it is the source.Exporter of both commands.
type NBDExports struct{ Server *nbdserver.Server }

func (e NBDExports) Add(name, description string, im *blockcache.Image) error {
	return e.Server.Add(nbdserver.Export{Name: name, Description: description, Backend: im})
}

func (e NBDExports) Remove(ctx context.Context, name string) error {
	return e.Server.Remove(ctx, name)
}
