// Package service is the conversion service behind `sluice convert-service`:
// it converts images as they are pushed (registry notifications) or first
// pulled (requests from nodes whose pull fell back for want of an
// artifact), so that no CI pipeline has to run `sluice convert`.
//
// Terms:
//   - A job is one image to convert, named by its key:
//     REGISTRY/REPOSITORY@DIGEST (or :TAG, for a request that names a
//     tag). Jobs are deduplicated by key: a push or request of an image
//     already queued or being converted adds nothing. An index job
//     converts nothing itself: it queues a job per platform manifest.
//   - An outcome is what became of a job: converted, skipped (already
//     converted, not an image, platform not wanted), refused (too large,
//     manifest unknown, registry denied access, bad image) or failed
//     (registry unreachable after the retries, conversion failed); each
//     with a short reason, logged with the image and counted in
//     sluice_convert_conversions_total{outcome,reason}.
//
// Input (api.go):
//   - POST /events takes the notification envelope distribution
//     (docker-registry) sends from its notifications.endpoints, and that
//     Harbor and others relay. Each push of a manifest of a repository
//     that --repos matches becomes a job; what it is (image, index,
//     artifact, signature, referrers index) is found when the job runs,
//     from the manifest itself. The service's own pushes come back as
//     events; they are recognised by the user agent and dropped at once.
//   - POST /convert takes {"image": "REGISTRY/REPOSITORY@sha256:..."}
//     (package client): the node agent sends it when an image falls back
//     for want of an artifact.
//
// Restart safety: each job is a file in the state dir, written atomically
// (temporary file, fsync, rename, fsync of the directory) before the
// request that queued it is answered, and removed only once the job has
// an outcome. A crash or kill -9 leaves the files of queued and running
// jobs, and the next start runs them all again from the start; each job's
// work dir is removed at start, so the work dir holds only running jobs.
//
// Nothing half-pushed is ever visible: artifact.Push uploads the blobs
// first and the artifact manifest last, and a manifest is what makes an
// artifact visible (as a referrer of its image). The signature is pushed
// after the artifact, because it is a referrer of the artifact manifest.
// A crash between the two leaves a complete artifact, only unsigned: nodes
// under trust.policy = "signed" ignore it, and the job, still queued, runs
// again at restart, finds no artifact its key signed, converts again
// (conversion is deterministic: the same artifact digest, whose blobs and
// manifest are already there) and signs it. A crash after the signature
// leaves a job whose re-run finds the signed artifact and skips it.
// Signing first would push a referrer of a manifest the registry does not
// hold yet, which registries handle unevenly; and signature.Sign signs the
// manifest as the registry serves it.
//
// Bounds: at most --max-parallel conversions run at once, each in its own
// directory under the work dir and refused (imageconv.ErrTooLarge) as
// soon as its source passes --max-image-size (compressed plus
// uncompressed layer bytes), so the work dir stays within about
// 2 x max-parallel x max-image-size; the queue holds at most --max-queue
// jobs (more are answered 503 and counted).
package service
