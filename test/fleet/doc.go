// Package fleet checks bench/fleet's model against real nodes: `sluice
// serve` processes behind Debian's docker-registry as a pull-through
// cache, counted in the origin's access log (TestPredictsEightNodes,
// built with -tags fleetvalidate until the model meets it).
package fleet
