package docker
import "testing"
func TestProbe(t *testing.T){ rtForTest(t) }
