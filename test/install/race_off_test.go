//go:build !race

package install

const raceBuild = false
