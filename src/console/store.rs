//! `/store/PATH`: the JPEGs the hub stored, for the images of events, and
//! nothing else. A path is taken apart into plain names before it touches
//! the disk (no `..`, no `.`, no empty or absolute parts, no backslashes or
//! NULs, whether written plainly or percent-encoded: the router decodes
//! first); the file it names must end in `.jpg`, and once symbolic links
//! are resolved it must still lie inside the store. Anything else is a 404,
//! the same answer as for a file that does not exist.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::extract::{Path as UrlPath, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use super::{jpeg_response, App};

/// The file `relative` names inside `store`, if it is one to serve.
pub fn resolve(store: &Path, relative: &str) -> Option<PathBuf> {
    let mut path = store.to_path_buf();
    for part in relative.split('/') {
        if part.is_empty() || part == "." || part == ".." || part.contains(['\\', '\0']) {
            return None;
        }
        path.push(part);
    }
    if path.extension()? != "jpg" {
        return None;
    }
    // Symbolic links inside the store must not lead out of it.
    let real = path.canonicalize().ok()?;
    (real.starts_with(store.canonicalize().ok()?) && real.is_file()).then_some(real)
}

pub async fn serve(State(app): State<Arc<App>>, UrlPath(relative): UrlPath<String>) -> Response {
    let not_found = || (StatusCode::NOT_FOUND, "not found").into_response();
    let Some(store) = app.fleet.store().map(Path::to_path_buf) else { return not_found() };
    // Off the runtime's thread: the disk may be slow.
    let read = tokio::task::spawn_blocking(move || std::fs::read(resolve(&store, &relative)?).ok()).await;
    match read {
        // Stored images never change under their name: a browser may keep them.
        Ok(Some(jpeg)) => jpeg_response(jpeg.into(), "private, max-age=86400"),
        _ => not_found(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_jpegs_inside_the_store_resolve() {
        let dir = tempfile::tempdir().unwrap();
        let store = dir.path().join("store");
        std::fs::create_dir_all(store.join("2026-01-02")).unwrap();
        std::fs::write(store.join("2026-01-02/yard-Cam-x.jpg"), b"jpeg").unwrap();
        std::fs::write(store.join("imagehub.log"), b"log").unwrap();
        std::fs::write(dir.path().join("secret.jpg"), b"secret").unwrap();
        std::os::unix::fs::symlink(dir.path().join("secret.jpg"), store.join("link.jpg")).unwrap();
        assert!(resolve(&store, "2026-01-02/yard-Cam-x.jpg").is_some());
        for bad in ["../secret.jpg", "2026-01-02/../../secret.jpg", "/secret.jpg", "2026-01-02//yard-Cam-x.jpg", "./2026-01-02/yard-Cam-x.jpg",
            "imagehub.log", "link.jpg", "..\\secret.jpg", "missing.jpg", "2026-01-02"]
        {
            assert_eq!(resolve(&store, bad), None, "{bad}");
        }
    }
}
