package main

import (
	"strings"
	"testing"
)

// TestConvertServiceConfig: convert_service is off by default, takes an
// http[s] URL, and anything else is an error naming the field.
func TestConvertServiceConfig(t *testing.T) {
	if d := defaultConfig(); d.ConvertService != "" {
		t.Errorf("convert_service defaults to %q, want off", d.ConvertService)
	}
	c, err := loadConfig(writeConfig(t, `convert_service = "http://sluice-convert.sluice.svc:8080"`))
	if err != nil || c.ConvertService != "http://sluice-convert.sluice.svc:8080" {
		t.Fatalf("%+v, %v", c.ConvertService, err)
	}
	for _, bad := range []string{"sluice-convert:8080", "ftp://x", "http://", "convert_service = 3"} {
		body := `convert_service = "` + bad + `"`
		if strings.Contains(bad, "=") {
			body = bad
		}
		if _, err := loadConfig(writeConfig(t, body)); err == nil || !strings.Contains(err.Error(), "convert_service") {
			t.Errorf("%s: %v, want an error naming convert_service", body, err)
		}
	}
}
