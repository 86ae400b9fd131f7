//! The console's operations over [`Backend`]: see [`super::super::console`].

use super::super::StoreError;
use super::super::backend::{Backend, Row, Sql, Tx, TxMode, params};
use super::super::console::{
    ApplicationRow, AuditRow, AwardListRow, CardDay, CommandRow, CommandStatus, ConsoleStore,
    DashboardFigures, DayRow, DayTotals, Decided, Decision, DeviceRow, NewApplication, NewCommand,
    PointsEvent, Proposed, StatRow, UserRow,
};
use super::{Ledger, audit, db_u64, from_db_u64};
use wenxiao_protocol::{BusinessDate, CardNo};

fn user_row(r: &Row) -> Result<UserRow, StoreError> {
    Ok(UserRow {
        username: r.text(0)?,
        password_hash: r.text(1)?,
        roles: r
            .text(2)?
            .split(',')
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect(),
        has_token: r.opt_text(3)?.is_some(),
        active: r.bool(4)?,
    })
}

fn json(text: &str) -> Result<serde_json::Value, StoreError> {
    serde_json::from_str(text).map_err(|e| StoreError::Corrupt(format!("JSON column: {e}")))
}

fn command_row(r: &Row) -> Result<CommandRow, StoreError> {
    Ok(CommandRow {
        command_id: r.int(0)?,
        kind: r.text(1)?,
        target: r.text(2)?,
        args: json(&r.text(3)?)?,
        status: CommandStatus::from_code(r.get(4)?)?,
        proposed_by: r.text(5)?,
        proposed_at_ms: r.int(6)?,
        proposal_reason: r.text(7)?,
        decided_by: r.opt_text(8)?,
        decided_at_ms: r.opt_int(9)?,
        decision_reason: r.opt_text(10)?,
        outcome: r.opt_text(11)?,
    })
}

fn application_row(r: &Row) -> Result<ApplicationRow, StoreError> {
    Ok(ApplicationRow {
        application_id: r.int(0)?,
        name: r.text(1)?,
        category: r.get(2)?,
        district: r.get(3)?,
        facts: json(&r.text(4)?)?,
        status: r.get(5)?,
        applied_by: r.text(6)?,
        applied_at_ms: r.int(7)?,
        recommended_by: r.opt_text(8)?,
        merchant_id: r.opt_int(9)?,
    })
}

fn date_param(d: BusinessDate) -> i64 {
    i64::from(d.get())
}

impl<B: Backend> ConsoleStore for Ledger<B> {
    async fn add_user(
        &self,
        username: String,
        password_hash: String,
        roles: Vec<String>,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        let mut tx = self.backend.begin(TxMode::Write).await?;
        let added = tx
            .execute(
                &Sql::both(
                    "INSERT INTO console_users (username, password_hash, roles, active, created_at_ms) \
                     VALUES ($1, $2, $3, TRUE, $4) ON CONFLICT (username) DO NOTHING",
                ),
                params![username.as_str(), password_hash, roles.join(","), now_ms],
            )
            .await?
            == 1;
        if added {
            let detail = serde_json::json!({ "roles": roles });
            audit::append_in(&mut tx, now_ms, "cli", "user.add", &username, &detail).await?;
        }
        tx.commit().await?;
        Ok(added)
    }

    async fn user(&self, username: String) -> Result<Option<UserRow>, StoreError> {
        let mut tx = self.backend.begin(TxMode::Autocommit).await?;
        let sql = Sql::both(
            "SELECT username, password_hash, roles, token_sha256, active FROM console_users \
             WHERE username = $1",
        );
        tx.query_opt(&sql, params![username])
            .await?
            .map(|r| user_row(&r))
            .transpose()
    }

    async fn user_by_token(&self, token_sha256: String) -> Result<Option<UserRow>, StoreError> {
        let mut tx = self.backend.begin(TxMode::Autocommit).await?;
        tx.query_opt(
            &Sql::both(
                "SELECT username, password_hash, roles, token_sha256, active FROM console_users \
                 WHERE token_sha256 = $1",
            ),
            params![token_sha256],
        )
        .await?
        .map(|r| user_row(&r))
        .transpose()
    }

    async fn list_users(&self) -> Result<Vec<UserRow>, StoreError> {
        let mut tx = self.backend.begin(TxMode::Autocommit).await?;
        tx.query(
            &Sql::both(
                "SELECT username, password_hash, roles, token_sha256, active FROM console_users \
                 ORDER BY username",
            ),
            &[],
        )
        .await?
        .iter()
        .map(user_row)
        .collect()
    }

    async fn set_roles(
        &self,
        username: String,
        roles: Vec<String>,
        by: String,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        let mut tx = self.backend.begin(TxMode::Write).await?;
        let changed = tx
            .execute(
                &Sql::both("UPDATE console_users SET roles = $2 WHERE username = $1"),
                params![username.as_str(), roles.join(",")],
            )
            .await?
            == 1;
        if changed {
            let detail = serde_json::json!({ "roles": roles });
            audit::append_in(&mut tx, now_ms, &by, "user.roles", &username, &detail).await?;
        }
        tx.commit().await?;
        Ok(changed)
    }

    async fn set_token(&self, username: String, token_sha256: String) -> Result<bool, StoreError> {
        let mut tx = self.backend.begin(TxMode::Write).await?;
        let n = tx
            .execute(
                &Sql::both("UPDATE console_users SET token_sha256 = $2 WHERE username = $1"),
                params![username, token_sha256],
            )
            .await?;
        tx.commit().await?;
        Ok(n == 1)
    }

    async fn create_session(
        &self,
        session_sha256: String,
        username: String,
        csrf_token: String,
        now_ms: i64,
        expires_at_ms: i64,
    ) -> Result<(), StoreError> {
        let mut tx = self.backend.begin(TxMode::Write).await?;
        tx.execute(
            &Sql::both(
                "INSERT INTO console_sessions (session_sha256, username, csrf_token, created_at_ms, \
                 expires_at_ms) VALUES ($1, $2, $3, $4, $5)",
            ),
            params![session_sha256, username, csrf_token, now_ms, expires_at_ms],
        )
        .await?;
        tx.commit().await
    }

    async fn session(
        &self,
        session_sha256: String,
        now_ms: i64,
    ) -> Result<Option<(UserRow, String)>, StoreError> {
        let mut tx = self.backend.begin(TxMode::Autocommit).await?;
        let row = tx
            .query_opt(
                &Sql::both(
                    "SELECT u.username, u.password_hash, u.roles, u.token_sha256, u.active, \
                     s.csrf_token FROM console_sessions s \
                     JOIN console_users u ON u.username = s.username \
                     WHERE s.session_sha256 = $1 AND s.expires_at_ms > $2",
                ),
                params![session_sha256, now_ms],
            )
            .await?;
        row.map(|r| Ok((user_row(&r)?, r.text(5)?))).transpose()
    }

    async fn end_session(&self, session_sha256: String, now_ms: i64) -> Result<(), StoreError> {
        let mut tx = self.backend.begin(TxMode::Write).await?;
        tx.execute(
            &Sql::both(
                "DELETE FROM console_sessions WHERE session_sha256 = $1 OR expires_at_ms <= $2",
            ),
            params![session_sha256, now_ms],
        )
        .await?;
        tx.commit().await
    }

    async fn propose(&self, c: NewCommand) -> Result<Proposed, StoreError> {
        let mut tx = self.backend.begin(TxMode::Write).await?;
        tx.execute(
            &Sql::pg_only("LOCK TABLE console_commands IN EXCLUSIVE MODE"),
            &[],
        )
        .await?;
        if let Some(r) = tx
            .query_opt(
                &Sql::both(
                    "SELECT command_id FROM console_commands \
                     WHERE kind = $1 AND target = $2 AND status IN (1, 5)",
                ),
                params![c.kind, c.target.as_str()],
            )
            .await?
        {
            return Ok(Proposed::DuplicatePending(r.int(0)?));
        }
        let id = tx
            .query_one(
                &Sql::both(
                    "SELECT CAST(COALESCE(MAX(command_id), 0) + 1 AS BIGINT) FROM console_commands",
                ),
                &[],
            )
            .await?
            .int(0)?;
        tx.execute(
            &Sql::both(
                "INSERT INTO console_commands (command_id, kind, target, args, status, proposed_by, \
                 proposed_at_ms, proposal_reason) VALUES ($1, $2, $3, $4, 1, $5, $6, $7)",
            ),
            params![
                id,
                c.kind,
                c.target.as_str(),
                c.args.to_string(),
                c.by.as_str(),
                c.now_ms,
                c.reason.as_str()
            ],
        )
        .await?;
        let detail = serde_json::json!({
            "command": id, "target": c.target, "args": c.args, "reason": c.reason,
        });
        audit::append_in(
            &mut tx,
            c.now_ms,
            &c.by,
            &format!("{}.propose", c.kind),
            &c.target,
            &detail,
        )
        .await?;
        tx.commit().await?;
        Ok(Proposed::Created(id))
    }

    async fn command(&self, command_id: i64) -> Result<Option<CommandRow>, StoreError> {
        let mut tx = self.backend.begin(TxMode::Autocommit).await?;
        tx.query_opt(
            &Sql::both(
                "SELECT command_id, kind, target, args, status, proposed_by, proposed_at_ms, \
                 proposal_reason, decided_by, decided_at_ms, decision_reason, outcome \
                 FROM console_commands WHERE command_id = $1",
            ),
            params![command_id],
        )
        .await?
        .map(|r| command_row(&r))
        .transpose()
    }

    async fn list_commands(
        &self,
        status: Option<CommandStatus>,
        limit: i64,
    ) -> Result<Vec<CommandRow>, StoreError> {
        let mut tx = self.backend.begin(TxMode::Autocommit).await?;
        let rows = match status {
            Some(s) => {
                tx.query(
                    &Sql::both(
                        "SELECT command_id, kind, target, args, status, proposed_by, \
                         proposed_at_ms, proposal_reason, decided_by, decided_at_ms, \
                         decision_reason, outcome FROM console_commands WHERE status = $1 \
                         ORDER BY command_id DESC LIMIT $2",
                    ),
                    params![s.code(), limit],
                )
                .await?
            }
            None => {
                tx.query(
                    &Sql::both(
                        "SELECT command_id, kind, target, args, status, proposed_by, \
                         proposed_at_ms, proposal_reason, decided_by, decided_at_ms, \
                         decision_reason, outcome FROM console_commands \
                         ORDER BY command_id DESC LIMIT $1",
                    ),
                    params![limit],
                )
                .await?
            }
        };
        rows.iter().map(command_row).collect()
    }

    async fn claim(&self, command_id: i64, by: String) -> Result<Decided, StoreError> {
        let mut tx = self.backend.begin(TxMode::Write).await?;
        let Some(row) = tx
            .query_opt(
                &Sql::both(
                    "SELECT status, proposed_by FROM console_commands \
                     WHERE command_id = $1 FOR UPDATE",
                ),
                params![command_id],
            )
            .await?
        else {
            return Ok(Decided::Unknown);
        };
        let (status, proposer) = (row.get::<i16>(0)?, row.text(1)?);
        if status != CommandStatus::Pending.code() && status != CommandStatus::Approving.code() {
            return Ok(Decided::NotPending);
        }
        if proposer == by {
            return Ok(Decided::OwnProposal);
        }
        tx.execute(
            &Sql::both(
                "UPDATE console_commands SET status = $2, decided_by = $3 \
                 WHERE command_id = $1 AND status IN (1, 5)",
            ),
            params![command_id, CommandStatus::Approving.code(), by.as_str()],
        )
        .await?;
        tx.commit().await?;
        Ok(Decided::Done)
    }

    async fn decide(&self, d: Decision) -> Result<Decided, StoreError> {
        let mut tx = self.backend.begin(TxMode::Write).await?;
        let Some(row) = tx
            .query_opt(
                &Sql::both(
                    "SELECT kind, target, status, proposed_by FROM console_commands \
                     WHERE command_id = $1 FOR UPDATE",
                ),
                params![d.command_id],
            )
            .await?
        else {
            return Ok(Decided::Unknown);
        };
        let (kind, target, status, proposer) =
            (row.text(0)?, row.text(1)?, row.get::<i16>(2)?, row.text(3)?);
        let open = if d.status == CommandStatus::Rejected {
            status == CommandStatus::Pending.code()
        } else {
            status == CommandStatus::Pending.code() || status == CommandStatus::Approving.code()
        };
        if !open {
            return Ok(Decided::NotPending);
        }
        if proposer == d.by {
            return Ok(Decided::OwnProposal);
        }
        tx.execute(
            &Sql::both(
                "UPDATE console_commands SET status = $2, decided_by = $3, decided_at_ms = $4, \
                 decision_reason = $5, outcome = $6 WHERE command_id = $1 AND status IN (1, 5)",
            ),
            params![
                d.command_id,
                d.status.code(),
                d.by.as_str(),
                d.now_ms,
                d.reason.as_str(),
                d.outcome.clone()
            ],
        )
        .await?;
        if let Some((date, seal)) = &d.seal {
            tx.execute(
                &Sql::both(
                    "INSERT INTO clearing_seals (business_date, seal_sha256, sealed_by, sealed_at_ms) \
                     VALUES ($1, $2, $3, $4) ON CONFLICT (business_date) DO NOTHING",
                ),
                params![date_param(*date), seal.as_str(), d.by.as_str(), d.now_ms],
            )
            .await?;
        }
        let verb = match d.status {
            CommandStatus::Approved => "approve",
            CommandStatus::Rejected => "reject",
            CommandStatus::Failed => "fail",
            CommandStatus::Pending | CommandStatus::Approving => "pending",
        };
        let detail = serde_json::json!({
            "command": d.command_id, "reason": d.reason, "outcome": d.outcome,
            "seal": d.seal.as_ref().map(|s| s.1.clone()),
        });
        audit::append_in(
            &mut tx,
            d.now_ms,
            &d.by,
            &format!("{kind}.{verb}"),
            &target,
            &detail,
        )
        .await?;
        tx.commit().await?;
        Ok(Decided::Done)
    }

    async fn append_audit(
        &self,
        actor: String,
        action: String,
        subject: String,
        detail: serde_json::Value,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        let mut tx = self.backend.begin(TxMode::Write).await?;
        audit::append_in(&mut tx, now_ms, &actor, &action, &subject, &detail).await?;
        tx.commit().await
    }

    async fn audit_page(
        &self,
        before_seq: Option<i64>,
        limit: i64,
    ) -> Result<Vec<AuditRow>, StoreError> {
        let mut tx = self.backend.begin(TxMode::Autocommit).await?;
        tx.query(
            &Sql::both(
                "SELECT seq, at_ms, actor, action, subject, detail, hash FROM audit_log \
                 WHERE seq < $1 ORDER BY seq DESC LIMIT $2",
            ),
            params![before_seq.unwrap_or(i64::MAX), limit],
        )
        .await?
        .iter()
        .map(|r| {
            Ok(AuditRow {
                seq: r.int(0)?,
                at_ms: r.int(1)?,
                actor: r.text(2)?,
                action: r.text(3)?,
                subject: r.text(4)?,
                detail: r.text(5)?,
                hash: r.text(6)?,
            })
        })
        .collect()
    }

    async fn seal(&self, date: BusinessDate) -> Result<Option<String>, StoreError> {
        let mut tx = self.backend.begin(TxMode::Autocommit).await?;
        tx.query_opt(
            &Sql::both("SELECT seal_sha256 FROM clearing_seals WHERE business_date = $1"),
            params![date_param(date)],
        )
        .await?
        .map(|r| r.text(0))
        .transpose()
    }

    async fn record_seal(
        &self,
        date: BusinessDate,
        seal: String,
        by: String,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        let mut tx = self.backend.begin(TxMode::Write).await?;
        let n = tx
            .execute(
                &Sql::both(
                    "INSERT INTO clearing_seals (business_date, seal_sha256, sealed_by, sealed_at_ms) \
                     VALUES ($1, $2, $3, $4) ON CONFLICT (business_date) DO NOTHING",
                ),
                params![date_param(date), seal.as_str(), by.as_str(), now_ms],
            )
            .await?;
        if n == 1 {
            let detail = serde_json::json!({ "seal": seal });
            audit::append_in(
                &mut tx,
                now_ms,
                &by,
                "clearing.seal",
                &format!("day {date}"),
                &detail,
            )
            .await?;
        }
        tx.commit().await
    }

    async fn day_totals(&self, date: BusinessDate) -> Result<Option<DayTotals>, StoreError> {
        let d = date_param(date);
        let mut tx = self.backend.begin(TxMode::Snapshot).await?;
        let Some(run) = tx
            .query_opt(&super::clearing::SELECT_RUN, params![d])
            .await?
        else {
            return Ok(None);
        };
        let summary = super::clearing::summary(date, &run)?;
        // Index-only on credits_day (business_date, status, amount_fen).
        let c = tx
            .query_one(
                &Sql::both(
                    "SELECT CAST(COUNT(*) AS BIGINT), CAST(COALESCE(SUM(amount_fen), 0) AS BIGINT), \
                     CAST(COALESCE(SUM(CASE WHEN status = 3 THEN 1 ELSE 0 END), 0) AS BIGINT), \
                     CAST(COALESCE(SUM(CASE WHEN status = 3 THEN amount_fen ELSE 0 END), 0) AS BIGINT) \
                     FROM credits WHERE business_date = $1",
                ),
                params![d],
            )
            .await?;
        let m = tx
            .query_one(
                &Sql::both(
                    "SELECT CAST(COUNT(*) AS BIGINT), CAST(COALESCE(SUM(subsidy_fen), 0) AS BIGINT), \
                     CAST(COALESCE(SUM(sales_fen), 0) AS BIGINT), \
                     CAST(COALESCE(SUM(refunds_fen), 0) AS BIGINT) \
                     FROM merchant_settlements WHERE business_date = $1",
                ),
                params![d],
            )
            .await?;
        let s = tx
            .query_one(
                &Sql::both(
                    "SELECT CAST(COALESCE(SUM(subsidy_fen), 0) AS BIGINT) FROM day_statistics \
                     WHERE business_date = $1",
                ),
                params![d],
            )
            .await?;
        tx.commit().await?;
        Ok(Some(DayTotals {
            summary,
            credits: (c.int(0)?, c.int(1)?),
            loaded: (c.int(2)?, c.int(3)?),
            merchants: m.int(0)?,
            merchant_subsidy_fen: m.int(1)?,
            merchant_sales_fen: m.int(2)?,
            merchant_refunds_fen: m.int(3)?,
            statistics_subsidy_fen: s.int(0)?,
        }))
    }

    async fn awards(&self, limit: i64) -> Result<Vec<AwardListRow>, StoreError> {
        let mut tx = self.backend.begin(TxMode::Autocommit).await?;
        tx.query(
            &Sql::both(
                "SELECT award_id, merchant_id, show_date, kind, amount_fen, evidence, status \
                 FROM organizer_awards ORDER BY award_id DESC LIMIT $1",
            ),
            params![limit],
        )
        .await?
        .iter()
        .map(award_row)
        .collect()
    }

    async fn award(&self, award_id: i64) -> Result<Option<AwardListRow>, StoreError> {
        let mut tx = self.backend.begin(TxMode::Autocommit).await?;
        tx.query_opt(
            &Sql::both(
                "SELECT award_id, merchant_id, show_date, kind, amount_fen, evidence, status \
                 FROM organizer_awards WHERE award_id = $1",
            ),
            params![award_id],
        )
        .await?
        .as_ref()
        .map(award_row)
        .transpose()
    }

    async fn clearing_days(&self, limit: i64) -> Result<Vec<DayRow>, StoreError> {
        let mut tx = self.backend.begin(TxMode::Autocommit).await?;
        tx.query(
            &Sql::both(
                "SELECT r.business_date, r.status, r.txn_count, r.subsidy_fen, r.credit_count, \
                 r.credit_fen, s.seal_sha256 FROM clearing_runs r \
                 LEFT JOIN clearing_seals s ON s.business_date = r.business_date \
                 ORDER BY r.business_date DESC LIMIT $1",
            ),
            params![limit],
        )
        .await?
        .iter()
        .map(|r| {
            Ok(DayRow {
                business_date: r.get(0)?,
                approved: r.int(1)? == 2,
                txn_count: r.int(2)?,
                subsidy_fen: r.int(3)?,
                credit_count: r.int(4)?,
                credit_fen: r.int(5)?,
                seal_sha256: r.opt_text(6)?,
            })
        })
        .collect()
    }

    async fn set_merchant_active(
        &self,
        merchant_id: i64,
        active: bool,
    ) -> Result<bool, StoreError> {
        let mut tx = self.backend.begin(TxMode::Write).await?;
        let n = tx
            .execute(
                &Sql::both("UPDATE merchants SET active = $2 WHERE merchant_id = $1"),
                params![merchant_id, active],
            )
            .await?;
        super::cluster::registry_changed(&mut tx).await?;
        tx.commit().await?;
        Ok(n == 1)
    }

    async fn put_device(
        &self,
        device_id: u64,
        kind: i16,
        merchant_id: Option<i64>,
        active: bool,
    ) -> Result<bool, StoreError> {
        let mut tx = self.backend.begin(TxMode::Write).await?;
        if let Some(m) = merchant_id
            && tx
                .query_opt(
                    &Sql::both("SELECT 1 FROM merchants WHERE merchant_id = $1"),
                    params![m],
                )
                .await?
                .is_none()
        {
            return Ok(false);
        }
        tx.execute(
            &Sql::both(
                "INSERT INTO devices (device_id, kind, merchant_id, operator, active) \
                 VALUES ($1, $2, $3, NULL, $4) ON CONFLICT (device_id) DO UPDATE \
                 SET kind = EXCLUDED.kind, merchant_id = EXCLUDED.merchant_id, \
                 active = EXCLUDED.active",
            ),
            params![db_u64(device_id), kind, merchant_id, active],
        )
        .await?;
        super::cluster::registry_changed(&mut tx).await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn set_device_active(&self, device_id: u64, active: bool) -> Result<bool, StoreError> {
        let mut tx = self.backend.begin(TxMode::Write).await?;
        let n = tx
            .execute(
                &Sql::both("UPDATE devices SET active = $2 WHERE device_id = $1"),
                params![db_u64(device_id), active],
            )
            .await?;
        super::cluster::registry_changed(&mut tx).await?;
        tx.commit().await?;
        Ok(n == 1)
    }

    async fn devices(&self, after: u64, limit: i64) -> Result<Vec<DeviceRow>, StoreError> {
        let mut tx = self.backend.begin(TxMode::Autocommit).await?;
        tx.query(
            &Sql::both(
                "SELECT d.device_id, d.kind, d.merchant_id, d.active, h.version FROM devices d \
                 LEFT JOIN device_hotlist h ON h.device_id = d.device_id \
                 WHERE d.device_id > $1 ORDER BY d.device_id LIMIT $2",
            ),
            params![db_u64(after), limit],
        )
        .await?
        .iter()
        .map(|r| {
            Ok(DeviceRow {
                device_id: from_db_u64(r.int(0)?),
                kind: r.get(1)?,
                merchant_id: r.opt_int(2)?,
                active: r.bool(3)?,
                hotlist_version: r.opt_int(4)?,
            })
        })
        .collect()
    }

    async fn set_budget_override(
        &self,
        name: &'static str,
        cap_fen: i64,
        by: String,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        let mut tx = self.backend.begin(TxMode::Write).await?;
        tx.execute(
            &Sql::both(
                "INSERT INTO budget_overrides (name, cap_fen, set_by, set_at_ms) \
                 VALUES ($1, $2, $3, $4) ON CONFLICT (name) DO UPDATE \
                 SET cap_fen = EXCLUDED.cap_fen, set_by = EXCLUDED.set_by, \
                 set_at_ms = EXCLUDED.set_at_ms",
            ),
            params![name, cap_fen, by, now_ms],
        )
        .await?;
        super::cluster::registry_changed(&mut tx).await?;
        tx.commit().await
    }

    async fn budget_overrides(&self) -> Result<Vec<(String, i64)>, StoreError> {
        let mut tx = self.backend.begin(TxMode::Autocommit).await?;
        tx.query(
            &Sql::both("SELECT name, cap_fen FROM budget_overrides ORDER BY name"),
            &[],
        )
        .await?
        .iter()
        .map(|r| Ok((r.text(0)?, r.int(1)?)))
        .collect()
    }

    async fn add_application(&self, a: NewApplication) -> Result<i64, StoreError> {
        let mut tx = self.backend.begin(TxMode::Write).await?;
        tx.execute(
            &Sql::pg_only("LOCK TABLE merchant_applications IN EXCLUSIVE MODE"),
            &[],
        )
        .await?;
        let id = tx
            .query_one(
                &Sql::both(
                    "SELECT CAST(COALESCE(MAX(application_id), 0) + 1 AS BIGINT) \
                     FROM merchant_applications",
                ),
                &[],
            )
            .await?
            .int(0)?;
        tx.execute(
            &Sql::both(
                "INSERT INTO merchant_applications (application_id, name, category, district, \
                 facts, status, applied_by, applied_at_ms) VALUES ($1, $2, $3, $4, $5, 1, $6, $7)",
            ),
            params![
                id,
                a.name.as_str(),
                a.category,
                a.district,
                a.facts.to_string(),
                a.by.as_str(),
                a.now_ms
            ],
        )
        .await?;
        let detail = serde_json::json!({ "name": a.name, "category": a.category,
            "district": a.district, "facts": a.facts });
        audit::append_in(
            &mut tx,
            a.now_ms,
            &a.by,
            "merchant.apply",
            &format!("application {id}"),
            &detail,
        )
        .await?;
        tx.commit().await?;
        Ok(id)
    }

    async fn applications(&self, limit: i64) -> Result<Vec<ApplicationRow>, StoreError> {
        let mut tx = self.backend.begin(TxMode::Autocommit).await?;
        tx.query(
            &Sql::both(
                "SELECT application_id, name, category, district, facts, status, applied_by, \
                 applied_at_ms, recommended_by, merchant_id FROM merchant_applications \
                 ORDER BY application_id DESC LIMIT $1",
            ),
            params![limit],
        )
        .await?
        .iter()
        .map(application_row)
        .collect()
    }

    async fn application(&self, id: i64) -> Result<Option<ApplicationRow>, StoreError> {
        let mut tx = self.backend.begin(TxMode::Autocommit).await?;
        tx.query_opt(
            &Sql::both(
                "SELECT application_id, name, category, district, facts, status, applied_by, \
                 applied_at_ms, recommended_by, merchant_id FROM merchant_applications \
                 WHERE application_id = $1",
            ),
            params![id],
        )
        .await?
        .map(|r| application_row(&r))
        .transpose()
    }

    async fn recommend_application(&self, id: i64, by: String) -> Result<bool, StoreError> {
        let mut tx = self.backend.begin(TxMode::Write).await?;
        let n = tx
            .execute(
                &Sql::both(
                    "UPDATE merchant_applications SET status = 2, recommended_by = $2 \
                     WHERE application_id = $1 AND status = 1",
                ),
                params![id, by.as_str()],
            )
            .await?;
        if n == 1 {
            audit::append_in(
                &mut tx,
                crate::clock::now_ms(),
                &by,
                "merchant.recommend",
                &format!("application {id}"),
                &serde_json::json!({}),
            )
            .await?;
        }
        tx.commit().await?;
        Ok(n == 1)
    }

    async fn sign_application(&self, id: i64) -> Result<Option<i64>, StoreError> {
        let mut tx = self.backend.begin(TxMode::Write).await?;
        let Some(r) = tx
            .query_opt(
                &Sql::both(
                    "SELECT status, merchant_id, name, category, district \
                     FROM merchant_applications WHERE application_id = $1 FOR UPDATE",
                ),
                params![id],
            )
            .await?
        else {
            return Ok(None);
        };
        match (r.get::<i16>(0)?, r.opt_int(1)?) {
            (3, Some(m)) => return Ok(Some(m)),
            (2, _) => {}
            _ => return Ok(None),
        }
        tx.execute(&Sql::pg_only("LOCK TABLE merchants IN EXCLUSIVE MODE"), &[])
            .await?;
        let merchant_id = tx
            .query_one(
                &Sql::both(
                    "SELECT CAST(COALESCE(MAX(merchant_id), 0) + 1 AS BIGINT) FROM merchants",
                ),
                &[],
            )
            .await?
            .int(0)?;
        tx.execute(
            &Sql::both(
                "INSERT INTO merchants (merchant_id, name, category, district, active) \
                 VALUES ($1, $2, $3, $4, TRUE)",
            ),
            params![merchant_id, r.text(2)?, r.get::<i16>(3)?, r.get::<i16>(4)?],
        )
        .await?;
        tx.execute(
            &Sql::both(
                "UPDATE merchant_applications SET status = 3, merchant_id = $2 \
                 WHERE application_id = $1",
            ),
            params![id, merchant_id],
        )
        .await?;
        super::cluster::registry_changed(&mut tx).await?;
        tx.commit().await?;
        Ok(Some(merchant_id))
    }

    async fn card_credits(&self, card: CardNo, days_max: i64) -> Result<Vec<CardDay>, StoreError> {
        let mut tx = self.backend.begin(TxMode::Snapshot).await?;
        let card = db_u64(card.0);
        let mut days: std::collections::BTreeMap<u32, CardDay> = std::collections::BTreeMap::new();
        // Stored purchases of days not yet cleared: their subsidy is pending.
        for r in tx
            .query(
                &Sql::both(
                    "SELECT t.business_date, CAST(SUM(t.subsidy_fen) AS BIGINT) FROM txns t \
                     WHERE t.card_no = $1 AND t.status = 1 AND t.subsidy_fen <> 0 \
                     AND NOT EXISTS (SELECT 1 FROM clearing_runs c \
                                     WHERE c.business_date = t.business_date) \
                     GROUP BY t.business_date",
                ),
                params![card],
            )
            .await?
        {
            let d: u32 = r.get(0)?;
            days.entry(d)
                .or_insert_with(|| CardDay::empty(d))
                .pending_fen += r.int(1)?;
        }
        for r in tx
            .query(
                &Sql::both(
                    "SELECT business_date, status, CAST(SUM(amount_fen) AS BIGINT) FROM credits \
                     WHERE card_no = $1 GROUP BY business_date, status",
                ),
                params![card],
            )
            .await?
        {
            let d: u32 = r.get(0)?;
            let e = days.entry(d).or_insert_with(|| CardDay::empty(d));
            let fen = r.int(2)?;
            match r.int(1)? {
                2 => e.released_fen += fen,
                3 => e.loaded_fen += fen,
                _ => e.held_fen += fen,
            }
        }
        tx.commit().await?;
        Ok(days
            .into_values()
            .rev()
            .take(usize::try_from(days_max).unwrap_or(0))
            .collect())
    }

    async fn card_points(&self, card: CardNo, limit: i64) -> Result<Vec<PointsEvent>, StoreError> {
        let mut tx = self.backend.begin(TxMode::Snapshot).await?;
        let card = db_u64(card.0);
        let mut events = Vec::new();
        for r in tx
            .query(
                &Sql::both(
                    "SELECT award_day, kind, points, merchant_id FROM points_awards \
                     WHERE card_no = $1 ORDER BY award_day DESC LIMIT $2",
                ),
                params![card, limit],
            )
            .await?
        {
            events.push(PointsEvent {
                day: r.get(0)?,
                kind: match r.int(1)? {
                    1 => "SIGN_IN",
                    2 => "REVIEW",
                    _ => "SHARE",
                },
                points: r.int(2)?,
                merchant_id: r.opt_int(3)?,
            });
        }
        // Redeemed: stored purchases that used points (the consumed holds).
        for r in tx
            .query(
                &Sql::both(
                    "SELECT business_date, points_used, merchant_id FROM txns \
                     WHERE card_no = $1 AND status = 1 AND points_used > 0 \
                     ORDER BY business_date DESC LIMIT $2",
                ),
                params![card, limit],
            )
            .await?
        {
            events.push(PointsEvent {
                day: r.get(0)?,
                kind: "REDEEMED",
                points: -r.int(1)?,
                merchant_id: r.opt_int(2)?,
            });
        }
        tx.commit().await?;
        events.sort_by_key(|e| std::cmp::Reverse(e.day));
        events.truncate(usize::try_from(limit).unwrap_or(0));
        Ok(events)
    }

    async fn dashboard(
        &self,
        today: Option<(BusinessDate, i64)>,
    ) -> Result<DashboardFigures, StoreError> {
        let mut tx = self.backend.begin(TxMode::Snapshot).await?;
        let mut f = DashboardFigures::default();
        let Some((today, day_start_ms)) = today else {
            return credits_and_budgets(tx, f).await;
        };
        for r in tx
            .query(
                &Sql::both(
                    "SELECT CAST((received_at_ms - $2) / 3600000 AS BIGINT) AS hour, \
                     CAST(COUNT(*) AS BIGINT), CAST(SUM(subsidy_fen) AS BIGINT) FROM txns \
                     WHERE business_date = $1 AND status = 1 GROUP BY hour ORDER BY hour",
                ),
                params![date_param(today), day_start_ms],
            )
            .await?
        {
            f.hours.push((r.int(0)?, r.int(1)?, r.int(2)?));
        }
        credits_and_budgets(tx, f).await
    }

    async fn statistics(
        &self,
        from: BusinessDate,
        to: BusinessDate,
    ) -> Result<Vec<StatRow>, StoreError> {
        let mut tx = self.backend.begin(TxMode::Autocommit).await?;
        tx.query(
            &Sql::both(
                "SELECT district, category, CAST(SUM(txn_count) AS BIGINT), \
                 CAST(SUM(sales_fen) AS BIGINT), CAST(SUM(subsidy_fen) AS BIGINT) \
                 FROM day_statistics WHERE business_date BETWEEN $1 AND $2 \
                 GROUP BY district, category ORDER BY district, category",
            ),
            params![date_param(from), date_param(to)],
        )
        .await?
        .iter()
        .map(|r| {
            Ok(StatRow {
                district: r.get(0)?,
                category: r.get(1)?,
                txn_count: r.int(2)?,
                sales_fen: r.int(3)?,
                subsidy_fen: r.int(4)?,
            })
        })
        .collect()
    }
}

impl CardDay {
    const fn empty(business_date: u32) -> Self {
        Self {
            business_date,
            pending_fen: 0,
            released_fen: 0,
            loaded_fen: 0,
            held_fen: 0,
        }
    }
}

async fn credits_and_budgets<T: Tx>(
    mut tx: T,
    mut f: DashboardFigures,
) -> Result<DashboardFigures, StoreError> {
    for r in tx
        .query(
            &Sql::both(
                "SELECT CASE \
                       WHEN status = 1 THEN 'cleared' \
                       WHEN status = 2 AND attempt_online_seq IS NOT NULL THEN 'in_doubt' \
                       WHEN status = 2 AND bound_device IS NOT NULL THEN 'bound' \
                       WHEN status = 2 THEN 'released' \
                       WHEN status = 3 THEN 'loaded' ELSE 'parked' END AS state, \
                     CAST(COUNT(*) AS BIGINT), CAST(SUM(amount_fen) AS BIGINT) FROM credits \
                     GROUP BY state ORDER BY state",
            ),
            &[],
        )
        .await?
    {
        f.credits.push((r.text(0)?, r.int(1)?, r.int(2)?));
    }
    f.open_cases = tx
        .query_one(
            &Sql::both("SELECT CAST(COUNT(*) AS BIGINT) FROM risk_cases WHERE status IN (1, 2)"),
            &[],
        )
        .await?
        .int(0)?;
    f.open_alerts = tx
        .query_one(
            &Sql::both(
                "SELECT CAST(COUNT(*) AS BIGINT) FROM risk_alerts a \
                     JOIN risk_cases c ON c.case_id = a.case_id WHERE c.status IN (1, 2)",
            ),
            &[],
        )
        .await?
        .int(0)?;
    for r in tx
        .query(
            &Sql::both(
                "SELECT budget_key, CAST(SUM(granted_fen) AS BIGINT) FROM budget_shards \
                     GROUP BY budget_key ORDER BY budget_key",
            ),
            &[],
        )
        .await?
    {
        f.budgets.push((r.get(0)?, r.int(1)?));
    }
    tx.commit().await?;
    Ok(f)
}

/// An `organizer_awards` row as the console lists it.
fn award_row(r: &Row) -> Result<AwardListRow, StoreError> {
    Ok(AwardListRow {
        award_id: r.int(0)?,
        merchant_id: r.int(1)?,
        show_date: r.get(2)?,
        kind: r.get(3)?,
        amount_fen: r.int(4)?,
        evidence: r.text(5)?,
        approved: r.int(6)? == 2,
    })
}
