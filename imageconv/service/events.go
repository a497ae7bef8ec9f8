package service

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/url"
	"regexp"
	"strings"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// Media types of distribution's notification envelope: v1 is
// distribution 2.x's (Debian's docker-registry), v2 distribution 3's.
const (
	EventsMediaType   = "application/vnd.docker.distribution.events.v1+json"
	EventsMediaTypeV2 = "application/vnd.docker.distribution.events.v2+json"
)

// envelope is a notification request's body: one or more events.
type envelope struct {
	Events *[]event `json:"events"`
}

// event is one registry event, with the fields the service reads
// (distribution's notifications.Event).
type event struct {
	ID     string `json:"id"`
	Action string `json:"action"`
	Target struct {
		MediaType  string `json:"mediaType"`
		Digest     string `json:"digest"`
		Repository string `json:"repository"`
		URL        string `json:"url"`
		Tag        string `json:"tag"`
	} `json:"target"`
	Request struct {
		Host      string `json:"host"`
		UserAgent string `json:"useragent"`
	} `json:"request"`
}

// errMalformed means a request body is not what the endpoint takes.
var errMalformed = errors.New("malformed request")

// decodeEnvelope reads a notification envelope; a body that is not one is
// errMalformed.
func decodeEnvelope(r io.Reader) ([]event, error) {
	var env envelope
	dec := json.NewDecoder(r)
	if err := dec.Decode(&env); err != nil {
		return nil, fmt.Errorf("%w: %v", errMalformed, err)
	}
	if dec.More() {
		return nil, fmt.Errorf("%w: data after the envelope", errMalformed)
	}
	if env.Events == nil {
		return nil, fmt.Errorf("%w: no \"events\" list", errMalformed)
	}
	return *env.Events, nil
}

// Results of an event or request that queued no job, as counted in
// sluice_convert_received_total{result}.
const (
	resultQueued      = "queued"
	resultDuplicate   = "duplicate"
	resultNotPush     = "not a push"
	resultNotManifest = "not a manifest"
	resultOwnPush     = "own push"
	resultReferrers   = "referrers tag"
	resultRepo        = "repository not matched"
	resultRegistry    = "registry not allowed"
	resultMalformed   = "malformed"
	resultQueueFull   = "queue full"
	resultQueueError  = "queue write failed"
)

// userAgent is the service's user agent towards registries: events of its
// own pushes carry it, and are dropped.
const userAgent = "sluice-convert-service"

// referrersTag is the tag the OCI referrers tag schema gives the index of
// a manifest's referrers.
var referrersTag = regexp.MustCompile(`^sha256-[0-9a-f]{64}$`)

// manifestTypes are the manifest media types a push event may name for
// an image or index.
var manifestTypes = map[string]bool{
	string(types.DockerManifestSchema2): true,
	string(types.DockerManifestList):    true,
	string(types.OCIManifestSchema1):    true,
	string(types.OCIImageIndex):         true,
}

// eventJob returns the key of the job an event asks for, or why it asks
// for none (a result).
func (o *options) eventJob(e event) (key, result string) {
	switch {
	case e.Action != "push":
		return "", resultNotPush
	case !manifestTypes[e.Target.MediaType]:
		return "", resultNotManifest
	case strings.HasPrefix(e.Request.UserAgent, userAgent):
		return "", resultOwnPush
	case referrersTag.MatchString(e.Target.Tag):
		return "", resultReferrers
	}
	registry := e.Request.Host
	if u, err := url.Parse(e.Target.URL); err == nil && u.Host != "" {
		registry = u.Host
	}
	if _, err := v1.NewHash(e.Target.Digest); err != nil || registry == "" {
		return "", resultMalformed
	}
	ref, err := name.ParseReference(registry+"/"+e.Target.Repository+"@"+e.Target.Digest, name.StrictValidation)
	if err != nil {
		return "", resultMalformed
	}
	return o.admit(ref)
}

// admit returns the key of the job for ref, or why there is none.
func (o *options) admit(ref name.Reference) (key, result string) {
	repo := ref.Context()
	if !o.registryAllowed(repo.RegistryStr()) {
		return "", resultRegistry
	}
	if !o.repoMatches(repo.RegistryStr(), repo.RepositoryStr()) {
		return "", resultRepo
	}
	return repo.RegistryStr() + "/" + repo.RepositoryStr() + separator(ref) + ref.Identifier(), resultQueued
}

func separator(ref name.Reference) string {
	if _, ok := ref.(name.Digest); ok {
		return "@"
	}
	return ":"
}
