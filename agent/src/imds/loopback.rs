//! A small IMDSv2 on loopback for the daemon's unit tests: it serves the
//! items it holds under `/latest/` (any token will do; `imds/tests.rs`
//! checks the tokens) and counts the reads of each.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, put};

use super::ImdsClient;

/// What it holds, and the reads of each path.
#[derive(Debug, Default)]
struct Held {
    items: HashMap<String, String>,
    reads: HashMap<String, usize>,
}

/// The running server.
#[derive(Debug, Clone)]
pub struct LoopbackImds {
    held: Arc<Mutex<Held>>,
    endpoint: String,
}

impl LoopbackImds {
    /// Serves `items` on 127.0.0.1 until the test's runtime ends.
    pub async fn start(items: &[(&str, &str)]) -> LoopbackImds {
        async fn item(
            State(held): State<Arc<Mutex<Held>>>,
            Path(path): Path<String>,
        ) -> (StatusCode, String) {
            let mut held = held.lock().unwrap();
            *held.reads.entry(path.clone()).or_default() += 1;
            match held.items.get(&path) {
                Some(value) => (StatusCode::OK, value.clone()),
                None => (StatusCode::NOT_FOUND, String::new()),
            }
        }
        let held = Arc::new(Mutex::new(Held {
            items: items
                .iter()
                .map(|(path, value)| (path.to_string(), value.to_string()))
                .collect(),
            ..Held::default()
        }));
        let app = axum::Router::new()
            .route("/latest/api/token", put(|| async { "token" }))
            .route("/latest/{*path}", get(item))
            .with_state(held.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        LoopbackImds { held, endpoint }
    }

    /// A client of it.
    pub fn client(&self) -> ImdsClient {
        ImdsClient::new(&self.endpoint).unwrap()
    }

    /// Serves `value` at `path` from now on, or 404 with `None`.
    pub fn set(&self, path: &str, value: Option<&str>) {
        let mut held = self.held.lock().unwrap();
        match value {
            Some(value) => held.items.insert(path.to_owned(), value.to_owned()),
            None => held.items.remove(path),
        };
    }

    /// The reads of `path` so far.
    pub fn reads(&self, path: &str) -> usize {
        self.held
            .lock()
            .unwrap()
            .reads
            .get(path)
            .copied()
            .unwrap_or(0)
    }
}
