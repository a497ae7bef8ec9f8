// Command sluiced is the sluice node agent: the containerd snapshotter, the
// NBD exports and the block cache in one process. It is not built yet; see
// the open issues.
package main

import (
	"fmt"
	"os"
)

func main() {
	fmt.Fprintln(os.Stderr, "sluiced: the node agent is not implemented yet")
	os.Exit(2)
}
