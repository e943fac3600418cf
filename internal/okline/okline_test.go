package okline

import "testing"

func TestValueReadsBackWithFields(t *testing.T) {
	for _, v := range []string{"", "h-123", "two words", `a "quote"`, "tab\there", "ünïcode", `back\slash`} {
		f, err := Fields("id=" + Value(v) + " ok=true")
		if err != nil || f["id"] != v || f["ok"] != "true" {
			t.Errorf("Value(%q): read back %q (%v), fields %v", v, f["id"], err, f)
		}
	}
	for _, bad := range []string{"=x", "k", `k="open`, `"k"=v`} {
		if _, err := Fields(bad); err == nil {
			t.Errorf("Fields(%q) accepted", bad)
		}
	}
}
