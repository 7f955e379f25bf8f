//! Temporary test directories (kept with `BATON_KEEP_TEST_DIR=1`) and free
//! loopback ports.

use std::net::TcpListener;
use std::path::{Path, PathBuf};

/// A test's scratch directory, removed on drop unless `BATON_KEEP_TEST_DIR=1`
/// or the test is failing (panicking).
#[derive(Debug)]
pub struct TestDir {
    // `None` once kept: the directory then outlives the test.
    dir: Option<tempfile::TempDir>,
    path: PathBuf,
}

impl TestDir {
    pub fn new(test_name: &str) -> Self {
        let dir = tempfile::Builder::new()
            .prefix(&format!("baton-test-{test_name}-"))
            .tempdir()
            .expect("cannot create a temporary directory");
        let path = dir.path().to_path_buf();
        if keep_test_dirs() {
            eprintln!("BATON_KEEP_TEST_DIR: keeping {}", path.display());
            return Self {
                dir: None,
                path: dir.keep(),
            };
        }
        Self {
            dir: Some(dir),
            path,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether the directory is removed when the test ends.
    pub fn is_temporary(&self) -> bool {
        self.dir.is_some()
    }
}

impl Drop for TestDir {
    /// A failing test keeps its directory (process logs, data dirs) for a
    /// look afterwards, and says where it is.
    fn drop(&mut self) {
        if std::thread::panicking()
            && let Some(dir) = self.dir.take()
        {
            eprintln!("test failed: keeping {}", dir.keep().display());
        }
    }
}

pub fn keep_test_dirs() -> bool {
    std::env::var("BATON_KEEP_TEST_DIR").is_ok_and(|value| value == "1")
}

/// A loopback port that was free a moment ago: bound to port 0, read, and
/// released. Another process may take it before ours binds, so starters
/// retry with a new port when the bind fails.
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("cannot bind 127.0.0.1:0");
    listener
        .local_addr()
        .expect("bound listener has an address")
        .port()
}
