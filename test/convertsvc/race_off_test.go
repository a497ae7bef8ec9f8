//go:build !race

package convertsvc

const raceBuild = false
