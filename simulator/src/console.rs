//! The gateway's console API as `run` and `bench` use it: clear a day, propose its approval
//! as one auditor and approve it as another (four eyes), download its settlement files,
//! and read the whole-store figures for the invariant check (`GET /v1/audit/figures`). So
//! a load run needs the gateway's listeners and two bearer tokens, never its database.

use crate::http;
use anyhow::Context;
use serde_json::{Value, json};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;
use wenxiao_gateway::config::Config;
use wenxiao_gateway::registry::MerchantId;
use wenxiao_gateway::store::{AuditFigures, DeviceAudit};
use wenxiao_protocol::{BusinessDate, CardNo, DeviceId, Fen};

/// The environment variable holding the bearer token of the auditor who runs and proposes
/// (and reads the figures).
pub const PROPOSER_TOKEN_ENV: &str = "WENXIAO_CONSOLE_TOKEN";
/// The environment variable holding the bearer token of the second auditor, who approves.
pub const APPROVER_TOKEN_ENV: &str = "WENXIAO_CONSOLE_APPROVER_TOKEN";
/// Longest one console exchange may take: clearing a 10 M-transaction day takes some 30 s
/// on this machine's kind.
pub const CONSOLE_HTTP_TIMEOUT_MS: u64 = 180_000;
/// Largest console answer read: a city day's `card_credits.csv` is some 40 bytes a credit.
pub const CONSOLE_RESPONSE_BYTES_MAX: u64 = 256 * 1024 * 1024;
/// The settlement files a cleared day has (the gateway's `FILES`).
pub const SETTLEMENT_FILES: [&str; 5] = [
    "card_credits.csv",
    "merchant_settlement.csv",
    "bureau_settlement.csv",
    "organizer_awards.csv",
    "statistics.csv",
];

/// The console API of one gateway, with the two auditors' tokens.
#[derive(Clone)]
pub struct ConsoleApi {
    addr: SocketAddr,
    proposer_token: String,
    approver_token: String,
}

impl std::fmt::Debug for ConsoleApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The tokens are credentials: never printed.
        f.debug_struct("ConsoleApi")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

/// What clearing and approving one day through the console gave.
#[derive(Debug, Clone, Default)]
pub struct ClearedDay {
    /// The day.
    pub business_date: Option<BusinessDate>,
    /// Its credits, from `card_credits.csv`: card and amount.
    pub credits: Vec<(CardNo, Fen)>,
    /// The files downloaded.
    pub files: Vec<PathBuf>,
    /// The day's seal, from its page.
    pub seal: Option<String>,
}

impl ConsoleApi {
    /// The console of the gateway configured by `config`, with the tokens from
    /// [`PROPOSER_TOKEN_ENV`] and [`APPROVER_TOKEN_ENV`]; `Err` says what is missing.
    pub fn from_env(config: &Config) -> anyhow::Result<Self> {
        let c = &config.console;
        anyhow::ensure!(
            c.enabled,
            "the gateway's console is off ([console] enabled = false)"
        );
        anyhow::ensure!(
            c.tls_cert_path.is_none(),
            "the gateway's console serves HTTPS; the simulator's client speaks plain HTTP \
             to a console on a trusted network only"
        );
        let token = |name: &str| {
            std::env::var(name)
                .ok()
                .filter(|t| !t.trim().is_empty())
                .with_context(|| {
                    format!(
                        "{name} is not set: the bearer token of an auditor \
                         (`wenxiao-gateway users add NAME --roles auditor`, then `users token NAME`)"
                    )
                })
        };
        Ok(Self::new(
            c.listen_addr,
            token(PROPOSER_TOKEN_ENV)?.trim().to_owned(),
            token(APPROVER_TOKEN_ENV)?.trim().to_owned(),
        ))
    }

    /// The console at `addr` (an unspecified address means this host).
    pub fn new(addr: SocketAddr, proposer_token: String, approver_token: String) -> Self {
        let addr = if addr.ip().is_unspecified() {
            SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), addr.port())
        } else {
            addr
        };
        Self {
            addr,
            proposer_token,
            approver_token,
        }
    }

    async fn call(
        &self,
        method: &str,
        path: &str,
        token: &str,
        body: &Value,
    ) -> anyhow::Result<(u16, String)> {
        let body = if body.is_null() {
            String::new()
        } else {
            body.to_string()
        };
        let request = http::request(
            method,
            self.addr,
            path,
            &[format!("Authorization: Bearer {token}")],
            &body,
        );
        tokio::time::timeout(
            Duration::from_millis(CONSOLE_HTTP_TIMEOUT_MS),
            http::exchange(self.addr, request, CONSOLE_RESPONSE_BYTES_MAX),
        )
        .await
        .map_err(|_| {
            anyhow::anyhow!(
                "{method} {path}: the console at {} did not answer within {CONSOLE_HTTP_TIMEOUT_MS} ms",
                self.addr
            )
        })?
    }

    async fn json(
        &self,
        method: &str,
        path: &str,
        token: &str,
        body: &Value,
    ) -> anyhow::Result<Value> {
        let (status, text) = self.call(method, path, token, body).await?;
        anyhow::ensure!(
            status == 200,
            "{method} {path}: {status} {}",
            snippet(&text)
        );
        serde_json::from_str(&text).with_context(|| format!("{method} {path}: not JSON"))
    }

    /// Whole-store figures for the invariant check.
    pub async fn figures(&self) -> anyhow::Result<AuditFigures> {
        let v = self
            .json(
                "GET",
                "/v1/audit/figures",
                &self.proposer_token,
                &Value::Null,
            )
            .await?;
        parse_figures(&v).context("GET /v1/audit/figures")
    }

    /// Purchases per merchant and business day, `from..=to`.
    pub async fn merchant_days(
        &self,
        from: BusinessDate,
        to: BusinessDate,
    ) -> anyhow::Result<Vec<(MerchantId, BusinessDate, u64)>> {
        let path = format!(
            "/v1/statistics/merchant-days?from={}&to={}",
            from.get(),
            to.get()
        );
        let v = self
            .json("GET", &path, &self.proposer_token, &Value::Null)
            .await?;
        let rows = at(&v, "rows").as_array().context("no rows")?;
        rows.iter()
            .map(|r| {
                let date =
                    u32::try_from(at(r, "business_date").as_u64().context("business_date")?)?;
                Ok((
                    MerchantId(at(r, "merchant_id").as_i64().context("merchant_id")?),
                    BusinessDate::new(date)?,
                    at(r, "purchases").as_u64().context("purchases")?,
                ))
            })
            .collect()
    }

    /// Clears `date` (before it has ended, which the gateway allows only with
    /// `clearing.early_close_allowed`), proposes its approval, approves it with the second
    /// token, and downloads its settlement files into `out_dir/yyyymmdd/`. Each step may be
    /// repeated: a day cleared or approved already is taken as it is.
    pub async fn clear_and_approve(
        &self,
        date: BusinessDate,
        out_dir: &Path,
    ) -> anyhow::Result<ClearedDay> {
        let d = date.get();
        let day_path = format!("/v1/clearing/days/{d}");
        self.json(
            "POST",
            &format!("{day_path}/run"),
            &self.proposer_token,
            &json!({ "early": true }),
        )
        .await?;
        let day = self
            .json("GET", &day_path, &self.proposer_token, &Value::Null)
            .await?;
        if at(&day, "approved").as_bool() != Some(true) {
            let proposal = format!("{day_path}/approval");
            let reason = json!({ "reason": "load run: figures and control totals checked" });
            let (status, text) = self
                .call("POST", &proposal, &self.proposer_token, &reason)
                .await?;
            // A pending proposal from an earlier attempt is approved as it is.
            anyhow::ensure!(
                status == 200 || status == 409 && text.contains("DUPLICATE_PENDING"),
                "POST {proposal}: {status} {}",
                snippet(&text)
            );
            let answer: Value = serde_json::from_str(&text)
                .with_context(|| format!("POST {proposal}: not JSON"))?;
            let id = at(&answer, "command_id")
                .as_i64()
                .with_context(|| format!("POST {proposal}: no command_id"))?;
            self.json(
                "POST",
                &format!("/v1/commands/clearing/{id}/approve"),
                &self.approver_token,
                &json!({ "reason": "load run: agreed" }),
            )
            .await?;
        }
        let day = self
            .json("GET", &day_path, &self.proposer_token, &Value::Null)
            .await?;
        anyhow::ensure!(
            at(&day, "approved").as_bool() == Some(true),
            "{d} is not approved after its approval: {}",
            snippet(&day.to_string())
        );
        let dir = out_dir.join(d.to_string());
        std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
        let mut out = ClearedDay {
            business_date: Some(date),
            seal: at(&day, "seal_sha256").as_str().map(str::to_owned),
            ..ClearedDay::default()
        };
        for name in SETTLEMENT_FILES {
            let path = format!("{day_path}/files/{name}");
            let (status, text) = self
                .call("GET", &path, &self.proposer_token, &Value::Null)
                .await?;
            anyhow::ensure!(status == 200, "GET {path}: {status} {}", snippet(&text));
            if name == "card_credits.csv" {
                out.credits = parse_card_credits(&text).with_context(|| format!("GET {path}"))?;
            }
            let file = dir.join(name);
            std::fs::write(&file, &text).with_context(|| format!("write {}", file.display()))?;
            out.files.push(file);
        }
        Ok(out)
    }
}

/// `v`'s field `key` (null when absent).
fn at<'a>(v: &'a Value, key: &str) -> &'a Value {
    v.get(key).unwrap_or(&Value::Null)
}

/// The first characters of an answer, for an error message.
fn snippet(text: &str) -> String {
    const SNIPPET_CHARS_MAX: usize = 300;
    text.chars().take(SNIPPET_CHARS_MAX).collect()
}

/// `GET /v1/audit/figures` as [`AuditFigures`].
pub fn parse_figures(v: &Value) -> anyhow::Result<AuditFigures> {
    let int = |v: &Value, field: &str| at(v, field).as_i64().with_context(|| field.to_owned());
    let devices = at(v, "devices")
        .as_array()
        .context("devices")?
        .iter()
        .map(|d| {
            Ok(DeviceAudit {
                device_id: DeviceId(u64::try_from(int(d, "device_id")?)?),
                rows: int(d, "rows")?,
                min_seq: int(d, "min_seq")?,
                max_seq: int(d, "max_seq")?,
                stored: int(d, "stored")?,
                subsidy_fen: Fen(int(d, "subsidy_fen")?),
            })
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let pair = |key: &str| -> anyhow::Result<(i64, Fen)> {
        Ok((int(at(v, key), "count")?, Fen(int(at(v, key), "fen")?)))
    };
    let budgets = at(v, "budgets")
        .as_array()
        .context("budgets")?
        .iter()
        .map(|b| {
            Ok((
                i32::try_from(int(b, "budget")?)?,
                Fen(int(b, "granted_fen")?),
            ))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok(AuditFigures {
        devices,
        released: pair("released")?,
        loaded: pair("loaded")?,
        budgets,
    })
}

/// The credit lines of a `card_credits.csv` (`credit_id,card_no,amount_fen`, then `TOTAL`
/// and, once approved, `SEAL`); the TOTAL line must match them.
pub fn parse_card_credits(text: &str) -> anyhow::Result<Vec<(CardNo, Fen)>> {
    let mut credits = Vec::new();
    let mut total = None;
    for (i, line) in text.lines().enumerate().skip(1) {
        let mut cols = line.split(',');
        let (Some(first), Some(second), Some(third)) = (cols.next(), cols.next(), cols.next())
        else {
            if line.starts_with("SEAL,") {
                continue;
            }
            anyhow::bail!("line {}: {line:?}", i + 1);
        };
        if first == "TOTAL" {
            total = Some((second.parse::<usize>()?, third.parse::<i64>()?));
            continue;
        }
        let card = CardNo(
            second
                .parse()
                .with_context(|| format!("line {}: card {second:?}", i + 1))?,
        );
        let fen = third
            .parse()
            .with_context(|| format!("line {}: amount {third:?}", i + 1))?;
        credits.push((card, Fen(fen)));
    }
    let sum: i64 = credits.iter().map(|(_, f)| f.get()).sum();
    anyhow::ensure!(
        total == Some((credits.len(), sum)),
        "its TOTAL line {total:?} is not its {} credits of {sum} fen",
        credits.len()
    );
    Ok(credits)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn card_credits_parse_and_their_total_must_match() {
        let good = "credit_id,card_no,amount_fen\n1,3100000000000001,880\n2,3100000000000002,100\nTOTAL,2,980\nSEAL,ab\n";
        let c = parse_card_credits(good).unwrap();
        assert_eq!(c.len(), 2);
        assert_eq!(c[1].1, Fen(100));
        let wrong_total = good.replace("TOTAL,2,980", "TOTAL,2,981");
        assert!(parse_card_credits(&wrong_total).is_err());
        let no_total = "credit_id,card_no,amount_fen\n1,3100000000000001,880\n";
        assert!(parse_card_credits(no_total).is_err());
        assert!(parse_card_credits("h\nnonsense\n").is_err());
    }

    #[test]
    fn figures_parse_and_a_missing_field_is_named() {
        let v = json!({
            "devices": [{ "device_id": 7, "rows": 3, "min_seq": 1, "max_seq": 3, "stored": 2, "subsidy_fen": 880 }],
            "released": { "count": 1, "fen": 880 },
            "loaded": { "count": 0, "fen": 0 },
            "budgets": [{ "budget": 202612, "granted_fen": 880 }],
        });
        let f = parse_figures(&v).unwrap();
        assert_eq!(f.devices[0].device_id, DeviceId(7));
        assert_eq!(f.released, (1, Fen(880)));
        assert_eq!(f.budgets, vec![(202612, Fen(880))]);
        let mut broken = v.clone();
        broken["loaded"] = json!({ "count": 0 });
        let e = parse_figures(&broken).unwrap_err();
        assert!(format!("{e:#}").contains("fen"), "{e:#}");
    }
}
