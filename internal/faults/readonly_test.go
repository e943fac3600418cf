package faults

import (
	"bufio"
	"errors"

	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/handoff-go/handoff/internal/testutil"
)

// TestDataDirReadOnly: kvd's data directory turns read-only under the
// running daemon. Writes are refused with 503 naming it, every
// acknowledged write is served, a handoff aborts in the drain (the log is
// not open for writing, so the incumbent does not seal) and the incumbent
// serves on; killed, it is restarted on the read-only disk and serves
// reads (the lock and the store open read-only); kvd --dump, on the
// read-only filesystem and once it is writable again, has every
// acknowledged write.
//
// A tmpfs cannot be made read-only under kvd: the kernel refuses to
// remount a filesystem read-only (EBUSY) while a file on it is open for
// writing, and kvd holds its log open. The test shows that, then makes
// the directory read-only the way it happens to a running daemon: ext4 on
// a loop device, mounted errors=remount-ro, told of an error through
// /sys/fs/ext4/<dev>/trigger_fs_error, remounts itself read-only.
func TestDataDirReadOnly(t *testing.T) {
	binaries(t)
	t.Run("tmpfs remount", func(t *testing.T) {
		dir := testutil.ShortDir(t)
		data := filepath.Join(dir, "data")
		mountTmpfs(t, data, "size=1m,mode=0700")
		c := newCluster(t, dir, options{data: data, scripts: map[string]string{"kvd-v2": scriptV2}})
		c.putOK(initialWrites)
		err := syscall.Mount("tmpfs", data, "tmpfs", syscall.MS_REMOUNT|syscall.MS_RDONLY, "size=1m,mode=0700")
		if err == nil {
			t.Log("the tmpfs was remounted read-only under kvd")
			c.checkReadOnly()
			testutil.Must(t, syscall.Mount("tmpfs", data, "tmpfs", syscall.MS_REMOUNT, "size=1m,mode=0700"))
		} else {
			if !errors.Is(err, syscall.EBUSY) {
				t.Fatalf("remount the tmpfs read-only: %v, want EBUSY or success", err)
			}
			t.Logf("remounting the tmpfs read-only under kvd: %v (kvd holds its log open for writing)", err)
			c.putOK(3)
		}
		c.stop()
		c.checkDump(data)
	})
	t.Run("ext4 errors=remount-ro", func(t *testing.T) {
		dir := testutil.ShortDir(t)
		data := filepath.Join(dir, "data")
		img := mountExt4(t, data)
		c := newCluster(t, dir, options{data: data, scripts: map[string]string{"kvd-v2": scriptV2}})
		c.putOK(initialWrites)
		trigger := filepath.Join("/sys/fs/ext4", filepath.Base(mountSource(t, data)), "trigger_fs_error")
		testutil.Must(t, os.WriteFile(trigger, []byte("1"), 0))
		if !mountedReadOnly(t, data) {
			t.Fatalf("%s is still writable after %s", data, trigger)
		}
		c.checkReadOnly()
		// Killed on the read-only disk: the supervisor starts it again,
		// and it opens its store read-only and serves.
		st := c.kill()
		c.checkReads()
		code, body := c.put()
		checkRefused(t, "read-only data directory, after a restart", code, body, http.StatusServiceUnavailable, "read-only file system")
		c.checkDegraded("read-only file system")
		t.Logf("restarted on the read-only disk as pid %d: %d acknowledged writes served, writes refused: %s", st.PID, len(c.acked), strings.TrimSpace(body))
		c.stop()
		c.checkDump(data) // on the read-only filesystem
		// Writable again: unmount and mount the image anew (ext4 replays
		// its journal).
		testutil.Must(t, syscall.Unmount(data, 0))
		mountLoop(t, img, data)
		c.checkDump(data)
	})
}

// checkReadOnly checks kvd on a data directory that just turned
// read-only.
func (c *cluster) checkReadOnly() {
	c.t.Helper()
	code, body := c.put()
	checkRefused(c.t, "read-only data directory", code, body, http.StatusServiceUnavailable, "read-only file system")
	c.t.Logf("read-only data directory: %d acknowledged writes, then %d %s", len(c.acked), code, strings.TrimSpace(body))
	c.checkDegraded("read-only file system")
	c.mustAbort(c.scripts["kvd-v2"], "read-only file system")
	c.checkReads()
	code, body = c.put()
	checkRefused(c.t, "read-only data directory, after the rollback", code, body, http.StatusServiceUnavailable, "read-only file system")
}

// mountExt4 makes an 8 MiB ext4 image and mounts it on dir through a loop
// device with errors=remount-ro; it returns the image's path. It skips the
// test where that cannot be done.
func mountExt4(t *testing.T, dir string) string {
	t.Helper()
	mkfs, err := exec.LookPath("mkfs.ext4")
	if err != nil {
		skip(t, "no mkfs.ext4: %v", err)
	}
	img := filepath.Join(t.TempDir(), "data.img")
	f, err := os.Create(img)
	testutil.Must(t, err)
	testutil.Must(t, f.Truncate(8<<20))
	testutil.Must(t, f.Close())
	if out, err := exec.Command(mkfs, "-q", "-F", img).CombinedOutput(); err != nil {
		skip(t, "mkfs.ext4: %v: %s", err, out)
	}
	testutil.Must(t, os.MkdirAll(dir, 0o700))
	mountLoop(t, img, dir)
	return img
}

// mountLoop mounts the ext4 image img on dir (errors=remount-ro) and
// unmounts it when the test ends, unless it was unmounted already.
func mountLoop(t *testing.T, img, dir string) {
	t.Helper()
	if out, err := exec.Command("mount", "-t", "ext4", "-o", "loop,errors=remount-ro", img, dir).CombinedOutput(); err != nil {
		skip(t, "mount %s on a loop device: %v: %s", img, err, out)
	}
	t.Cleanup(func() {
		if err := syscall.Unmount(dir, syscall.MNT_DETACH); err != nil && !errors.Is(err, syscall.EINVAL) {
			t.Errorf("unmount %s: %v", dir, err)
		}
	})
}

// mountEntry returns the fields of dir's line in /proc/self/mounts.
func mountEntry(t *testing.T, dir string) []string {
	t.Helper()
	f, err := os.Open("/proc/self/mounts")
	testutil.Must(t, err)
	defer f.Close()
	var last []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if fs := strings.Fields(sc.Text()); len(fs) >= 4 && fs[1] == dir {
			last = fs
		}
	}
	if last == nil {
		t.Fatalf("%s is not a mount point", dir)
	}
	return last
}

// mountSource is the device mounted on dir.
func mountSource(t *testing.T, dir string) string { return mountEntry(t, dir)[0] }

// mountedReadOnly says whether dir's filesystem refuses to create a
// file with EROFS (ext4 marks the mount emergency_ro, not ro, in
// /proc/mounts when it turns read-only on an error).
func mountedReadOnly(t *testing.T, dir string) bool {
	t.Helper()
	err := os.WriteFile(filepath.Join(dir, "probe"), nil, 0o600)
	if err == nil {
		os.Remove(filepath.Join(dir, "probe"))
	}
	return errors.Is(err, syscall.EROFS)
}
