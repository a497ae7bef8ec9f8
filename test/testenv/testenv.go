// Package testenv hands the end-to-end harness of test/internal to code
// outside test/: the benchmarks under bench/ (bench/startup) run pods on
// the same private containerd, Debian docker-registry, image builder and
// process helpers as the end-to-end tests, and Go's internal rule keeps
// them from importing test/internal directly. Everything here is an alias,
// so a value is the same type on both sides and its documentation is in
// the package it comes from. (Moving those packages out of internal/ is the
// cleaner fix; it rewrites the imports of some thirty test files, so it
// waits for a quiet moment.)
package testenv

import (
	"github.com/sluice-project/sluice/test/internal/containerdtest"
	"github.com/sluice-project/sluice/test/internal/debregistry"
	"github.com/sluice-project/sluice/test/internal/imagebuild"
	"github.com/sluice-project/sluice/test/internal/proc"
	"github.com/sluice-project/sluice/test/internal/promtext"
)

// containerd (containerdtest).
type (
	// Containerd is containerdtest.Containerd: a running private containerd.
	Containerd = containerdtest.Containerd
	// ContainerdConfig is containerdtest.Config.
	ContainerdConfig = containerdtest.Config
	// ContainerdVersion is containerdtest.Version.
	ContainerdVersion = containerdtest.Version
)

// The containerd versions (containerdtest.V1, V2).
const (
	Containerd16 = containerdtest.V1
	Containerd2  = containerdtest.V2
)

// ContainerdVersions are containerdtest.Versions, oldest first.
var ContainerdVersions = containerdtest.Versions

var (
	// StartContainerd is containerdtest.Start.
	StartContainerd = containerdtest.Start
	// Containerd2Dir is containerdtest.Dir2: where containerd 2.x is
	// installed.
	Containerd2Dir = containerdtest.Dir2
)

// registry (debregistry).
type (
	// Registry is debregistry.Registry: a running docker-registry.
	Registry = debregistry.Registry
	// RegistryOption is debregistry.Option.
	RegistryOption = debregistry.Option
)

// RegistryBinary is debregistry.Binary.
const RegistryBinary = debregistry.Binary

// StartRegistry is debregistry.Start.
var StartRegistry = debregistry.Start

// images (imagebuild).
type (
	// ImageBuilder is imagebuild.Builder.
	ImageBuilder = imagebuild.Builder
	// Layer is imagebuild.Layer.
	Layer = imagebuild.Layer
	// Meta is imagebuild.Meta.
	Meta = imagebuild.Meta
)

var (
	// NewImageBuilder is imagebuild.New.
	NewImageBuilder = imagebuild.New
	// ImageOf is imagebuild.Image.
	ImageOf = imagebuild.Image
)

// processes (proc).

// Proc is proc.Proc: a started process whose exit is watched.
type Proc = proc.Proc

var (
	// StartProc is proc.Start.
	StartProc = proc.Start
	// FreePort is proc.FreePort.
	FreePort = proc.FreePort
	// LogTail is proc.LogTail.
	LogTail = proc.LogTail
)

// metrics (promtext).

// MetricSamples is promtext.Samples: "name{labels}" -> value.
type MetricSamples = promtext.Samples

// GetMetrics is promtext.Get.
var GetMetrics = promtext.Get
