//! Runnable examples of collegedb; see `quickstart.rs` and the Worker example in `worker/`.
