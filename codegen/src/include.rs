//! The protos `trellis-build` ships, written under the output directory so
//! that a proto imports them with no setup.

use std::path::{Path, PathBuf};

use prost_types::FileDescriptorProto;

use crate::Error;

/// The folder, under the output directory, that holds the shipped protos.
const INCLUDE_DIR: &str = "trellis-include";

/// `google/api/annotations.proto`, which declares the `google.api.http` option.
pub(crate) const ANNOTATIONS_PROTO: &str = "google/api/annotations.proto";

/// `google/api/http.proto`, which declares `HttpRule`.
pub(crate) const HTTP_PROTO: &str = "google/api/http.proto";

/// Each shipped proto: its import name and its text.
const FILES: &[(&str, &str)] = &[
    (crate::policy::OPTIONS_PROTO, include_str!("../proto/trellis/options.proto")),
    (ANNOTATIONS_PROTO, include_str!("../proto/google/api/annotations.proto")),
    (HTTP_PROTO, include_str!("../proto/google/api/http.proto")),
];

/// Writes the shipped protos under `out_dir` (leaving a file alone when it is
/// there already, so its timestamp stays put) and returns the include path
/// to add after the user's.
pub(crate) fn write(out_dir: &Path) -> Result<PathBuf, Error> {
    let dir = out_dir.join(INCLUDE_DIR);
    for (name, text) in FILES {
        let path = dir.join(name);
        if std::fs::read_to_string(&path).is_ok_and(|old| old == *text) {
            continue;
        }
        let parent = path.parent().unwrap_or(&dir);
        std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
        std::fs::write(&path, text).map_err(|e| Error::io(&path, e))?;
    }
    Ok(dir)
}

/// Leaves out of `files` the shipped protos that need no Rust code: the
/// options are read at build time. The `google.api` messages stay when a
/// message of another file uses one of them as a field.
pub(crate) fn drop_option_files(files: &mut Vec<FileDescriptorProto>) {
    let uses_google_api = files.iter().filter(|file| file.package() != "google.api").any(|file| {
        let mut messages: Vec<&prost_types::DescriptorProto> = file.message_type.iter().collect();
        let mut found = false;
        while let Some(message) = messages.pop() {
            found |= message.field.iter().any(|field| field.type_name().starts_with(".google.api."));
            messages.extend(&message.nested_type);
        }
        found
    });
    files.retain(|file| {
        let name = file.name();
        name != crate::policy::OPTIONS_PROTO
            && (uses_google_api || (name != ANNOTATIONS_PROTO && name != HTTP_PROTO))
    });
}
