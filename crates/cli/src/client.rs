//! Talking to a running server: where it is, the credential, errors as exit codes, and the
//! three output formats of every command that prints data.

use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, ValueEnum};
use serde_json::Value;

/// Exit status: the thing asked about failed (a run failed, a flag is off).
pub const FAILED: u8 = 1;
/// Exit status: the server cannot be reached or cannot serve now.
pub const UNAVAILABLE: u8 = 4;

/// Where the server is and who is asking.
#[derive(Debug, Clone, Args)]
pub struct ServerArgs {
    /// The server's base URL.
    #[arg(long, env = "FLOTILLA_SERVER", default_value = "http://127.0.0.1:8080")]
    server: String,
    /// An API key or a JWT (sent as `Authorization: Bearer`).
    #[arg(long, env = "FLOTILLA_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
}

/// How data is printed on stdout.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// Columns for people.
    #[default]
    Table,
    /// JSON, as the API answers it.
    Json,
    /// YAML of the same data.
    Yaml,
}

/// A failed call, and the exit status it means.
#[derive(Debug)]
pub struct Failure {
    pub message: String,
    pub code: u8,
}

impl Failure {
    /// Prints the failure on stderr and gives its exit status.
    pub fn report(&self) -> ExitCode {
        eprintln!("error: {}", self.message);
        ExitCode::from(self.code)
    }
}

/// A client for one server.
pub struct Client {
    http: reqwest::Client,
    base: String,
    api_key: Option<String>,
}

impl Client {
    /// A client for `args.server`; `timeout` bounds each request (None: a stream).
    pub fn new(args: &ServerArgs, timeout: Option<Duration>) -> Result<Client, Failure> {
        let base = args.server.trim_end_matches('/').to_owned();
        let parsed = url::Url::parse(&base).map_err(|e| Failure {
            message: format!("--server `{base}` is not a URL: {e}"),
            code: 2,
        })?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(Failure {
                message: format!("--server `{base}` must start with http:// or https://"),
                code: 2,
            });
        }
        let mut http = reqwest::Client::builder().connect_timeout(Duration::from_secs(5));
        if let Some(t) = timeout {
            http = http.timeout(t);
        }
        Ok(Client {
            http: http.build().map_err(|e| Failure {
                message: e.to_string(),
                code: UNAVAILABLE,
            })?,
            base,
            api_key: args.api_key.clone(),
        })
    }

    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let r = self.http.request(method, format!("{}{path}", self.base));
        match &self.api_key {
            Some(k) => r.bearer_auth(k),
            None => r,
        }
    }

    /// Sends a request and reads the JSON answer; an error status becomes a [`Failure`]
    /// carrying the server's message.
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<(u16, Value), Failure> {
        let mut r = self.request(method, path);
        if let Some(b) = body {
            r = r.json(b);
        }
        let resp = r.send().await.map_err(|e| self.unreachable(&e))?;
        let status = resp.status().as_u16();
        let text = resp.text().await.map_err(|e| self.unreachable(&e))?;
        let value: Value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        if status >= 400 {
            let message = value["message"]
                .as_str()
                .map_or_else(|| value.to_string(), str::to_owned);
            return Err(Failure {
                message: format!("{status}: {message}"),
                code: if status == 503 || status == 504 {
                    UNAVAILABLE
                } else {
                    FAILED
                },
            });
        }
        Ok((status, value))
    }

    /// A streaming GET (server-sent events), with its status checked.
    pub async fn stream(&self, path: &str) -> Result<reqwest::Response, Failure> {
        let resp = self
            .request(reqwest::Method::GET, path)
            .header("accept", "text/event-stream")
            .send()
            .await
            .map_err(|e| self.unreachable(&e))?;
        if !resp.status().is_success() {
            let status = resp.status().as_u16();
            let body: Value = resp.json().await.unwrap_or_default();
            return Err(Failure {
                message: format!("{status}: {}", body["message"].as_str().unwrap_or("")),
                code: if status == 503 { UNAVAILABLE } else { FAILED },
            });
        }
        Ok(resp)
    }

    fn unreachable(&self, e: &reqwest::Error) -> Failure {
        let what = if e.is_timeout() {
            "did not answer in time"
        } else {
            "cannot be reached"
        };
        Failure {
            message: format!("the server at {} {what}: {e}", self.base),
            code: UNAVAILABLE,
        }
    }
}

/// Prints `data` as JSON or YAML, or as the table `columns` picks out of each of `rows`
/// (a JSON pointer per column).
pub fn print(output: Output, data: &Value, rows: &[Value], columns: &[(&str, &str)]) {
    match output {
        Output::Json => println!("{}", serde_json::to_string_pretty(data).unwrap_or_default()),
        Output::Yaml => print!("{}", serde_saphyr::to_string(data).unwrap_or_default()),
        Output::Table => print!("{}", table(rows, columns)),
    }
}

/// Aligned columns with a header; a missing value is `-`.
pub fn table(rows: &[Value], columns: &[(&str, &str)]) -> String {
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            columns
                .iter()
                .map(|(_, pointer)| match r.pointer(pointer) {
                    None | Some(Value::Null) => "-".to_owned(),
                    Some(Value::String(s)) => s.clone(),
                    Some(v) => v.to_string(),
                })
                .collect()
        })
        .collect();
    let widths: Vec<usize> = columns
        .iter()
        .enumerate()
        .map(|(i, (h, _))| {
            cells
                .iter()
                .map(|r| r[i].chars().count())
                .chain([h.len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |values: Vec<&str>| {
        let mut l = values
            .iter()
            .zip(&widths)
            .map(|(v, w)| format!("{v:<w$}"))
            .collect::<Vec<_>>()
            .join("  ");
        l.truncate(l.trim_end().len());
        l + "\n"
    };
    let mut out = line(columns.iter().map(|(h, _)| *h).collect());
    for r in &cells {
        out.push_str(&line(r.iter().map(String::as_str).collect()));
    }
    out
}

/// Reads `--input`: JSON text, `@file`, or `-` for stdin.
pub fn read_input(text: &str) -> Result<Value, Failure> {
    let bad = |message: String| Failure { message, code: 2 };
    let raw = match text {
        "-" => std::io::read_to_string(std::io::stdin())
            .map_err(|e| bad(format!("reading --input from stdin: {e}")))?,
        t if t.starts_with('@') => std::fs::read_to_string(&t[1..])
            .map_err(|e| bad(format!("reading --input {t}: {e}")))?,
        t => t.to_owned(),
    };
    serde_json::from_str(&raw).map_err(|e| bad(format!("--input is not JSON: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn tables_align_and_show_missing_values() {
        let rows = [
            json!({"id": "r1", "status": "succeeded"}),
            json!({"id": "run-22", "n": 3}),
        ];
        assert_eq!(
            table(&rows, &[("ID", "/id"), ("STATUS", "/status"), ("N", "/n")]),
            "ID      STATUS     N\nr1      succeeded  -\nrun-22  -          3\n"
        );
    }

    #[test]
    fn input_is_json_or_a_file() {
        assert_eq!(read_input("{\"a\": 1}").unwrap(), json!({"a": 1}));
        let bad = read_input("{a}").unwrap_err();
        assert_eq!(bad.code, 2);
        assert!(bad.message.contains("not JSON"));
        assert!(
            read_input("@/no/such/file")
                .unwrap_err()
                .message
                .contains("/no/such/file")
        );
    }
}
