//! Settlement files of a cleared business day: CSV, one header row, the rows in key
//! order, and a control-total line (`TOTAL,…`) the receiving side checks. Money in fen.
//! Regenerating the files of a day gives the same bytes. An approved day is sealed: the
//! SHA-256 of its fixed figures ([`seal_hash`]) is recorded at approval, and each file
//! ends with a `SEAL,<hex>` line after its control total. [`run_day`] is the clearing step
//! the CLI, the console and the simulator's demo share.

use crate::registry::MerchantId;
use crate::registry::{Category, District};
use crate::store::Store;
use std::path::{Path, PathBuf};
use wenxiao_protocol::BusinessDate;
use wenxiao_protocol::{CardNo, Fen};

/// What [`run_day`] does to the day.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Clear it (idempotent), and approve it at once when `approve`.
    Clear {
        /// Also run the audit step.
        approve: bool,
    },
    /// Only the audit step: the day must be cleared already.
    Approve,
}

/// Runs `step` on `date` at `now_ms` (the real clock for the CLI, the simulated one for the
/// demo), then reads the day's report and writes its settlement files under `dir`; returns
/// the report and the files. A day is cleared only once it has ended in Asia/Shanghai and
/// `grace_ms` more have passed, for the commits still in flight at 24:00 (one that commits
/// later still is filed with the next day).
pub async fn run_day<S: Store + crate::store::console::ConsoleStore>(
    store: &S,
    step: Step,
    date: BusinessDate,
    fen_per_point: i64,
    (now, grace_ms): (i64, i64),
    dir: &Path,
) -> anyhow::Result<(ClearingReport, Vec<PathBuf>)> {
    let opens_at = crate::clock::day_end_ms(date).saturating_add(grace_ms);
    if matches!(step, Step::Clear { .. }) && now < opens_at {
        anyhow::bail!(
            "business day {date} cannot be cleared yet: it ends at 24:00 Asia/Shanghai, and \
             clearing waits clearing.grace_ms = {grace_ms} more ({} s from now)",
            (opens_at - now + 999) / 1_000
        );
    }
    match step {
        Step::Approve => {
            anyhow::ensure!(
                store.approve_day(date, now).await?,
                "{date} is not cleared yet"
            );
        }
        Step::Clear { approve } => {
            store.clear_day(date, fen_per_point, now).await?;
            if approve {
                store.approve_day(date, now).await?;
            }
        }
    }
    let report = store
        .clearing_report(date)
        .await?
        .ok_or_else(|| anyhow::anyhow!("{date} is not cleared"))?;
    let seal = if report.summary.approved {
        let seal = seal_hash(&report);
        store
            .record_seal(date, seal.clone(), "cli".to_owned(), now)
            .await?;
        // The first seal recorded stands: a day approved through the console keeps it.
        store.seal(date).await?
    } else {
        None
    };
    let files = write_settlement_files(&report, dir, seal.as_deref())?;
    Ok((report, files))
}

/// Writing a file failed.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {source}")]
pub struct FileError {
    path: PathBuf,
    source: std::io::Error,
}

fn district_name(code: i16) -> String {
    District::from_code(code).map_or_else(|| code.to_string(), |d| d.label().to_owned())
}

fn category_name(code: i16) -> String {
    Category::from_code(code).map_or_else(|| code.to_string(), |c| c.label().to_owned())
}

/// The seal of an approved day: the SHA-256 (hex) over its fixed figures — the run's
/// totals, every credit, every merchant settlement, every statistics line and every award
/// — each field length-prefixed, in key order. The loaded figures, which grow as cards
/// are loaded, are not in it.
pub fn seal_hash(report: &ClearingReport) -> String {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    let mut field = |v: &str| {
        h.update(u64::try_from(v.len()).unwrap_or(u64::MAX).to_be_bytes());
        h.update(v.as_bytes());
    };
    let s = &report.summary;
    field("wenxiao-clearing-seal-v1");
    for v in [
        i64::from(s.business_date.get()),
        s.txn_count,
        s.subsidy_fen.get(),
        s.credit_count,
        s.credit_fen.get(),
    ] {
        field(&v.to_string());
    }
    for c in &report.credits {
        field(&format!(
            "C{},{},{}",
            c.credit_id,
            c.card_no,
            c.amount_fen.get()
        ));
    }
    for m in &report.merchants {
        field(&format!(
            "M{},{},{},{},{},{}",
            m.merchant_id.0,
            m.txn_count,
            m.sales_fen.get(),
            m.refunds_fen.get(),
            m.points_fen.get(),
            m.subsidy_fen.get()
        ));
    }
    for r in &report.statistics {
        field(&format!(
            "S{},{},{},{},{}",
            r.district,
            r.category,
            r.txn_count,
            r.sales_fen.get(),
            r.subsidy_fen.get()
        ));
    }
    for a in &report.awards {
        field(&format!(
            "A{},{},{},{},{}",
            a.award_id,
            a.merchant_id.0,
            a.show_date,
            a.kind,
            a.amount_fen.get()
        ));
    }
    hex::encode(h.finalize())
}

fn write(path: &Path, text: &str) -> Result<PathBuf, FileError> {
    let err = |source| FileError {
        path: path.to_owned(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    // Write then rename, so a reader never sees half a file.
    let tmp = path.with_extension("csv.tmp");
    std::fs::write(&tmp, text).map_err(err)?;
    std::fs::rename(&tmp, path).map_err(err)?;
    Ok(path.to_owned())
}

/// The four files of a day, under `dir/yyyymmdd/`: card credits (for the card company),
/// merchant settlement (card company → merchants), bureau settlement (culture bureau →
/// card company) and statistics by district and category.
///
/// A sealed day's files end with `SEAL,<hex>` after the control total.
pub fn write_settlement_files(
    report: &ClearingReport,
    dir: &Path,
    seal: Option<&str>,
) -> Result<Vec<PathBuf>, FileError> {
    let write = |path: &Path, text: &str| match seal {
        Some(seal) => write(path, &format!("{text}SEAL,{seal}\n")),
        None => write(path, text),
    };
    let s = &report.summary;
    let day = dir.join(s.business_date.get().to_string());
    let mut files = Vec::new();

    let mut cards = String::from("credit_id,card_no,amount_fen\n");
    let mut sum = 0i64;
    for c in &report.credits {
        cards.push_str(&format!(
            "{},{},{}\n",
            c.credit_id,
            c.card_no,
            c.amount_fen.get()
        ));
        sum += c.amount_fen.get();
    }
    cards.push_str(&format!("TOTAL,{},{sum}\n", report.credits.len()));
    files.push(write(&day.join("card_credits.csv"), &cards)?);

    let mut merchants = String::from(
        "merchant_id,txn_count,sales_fen,refunds_fen,points_fen,payable_fen,subsidy_fen\n",
    );
    let mut t = [0i64; 6];
    for m in &report.merchants {
        // What the card company pays the merchant: card sales less refunds, plus the
        // points its customers redeemed.
        let payable = m.sales_fen.get() - m.refunds_fen.get() + m.points_fen.get();
        let row = [
            m.txn_count,
            m.sales_fen.get(),
            m.refunds_fen.get(),
            m.points_fen.get(),
            payable,
            m.subsidy_fen.get(),
        ];
        merchants.push_str(&format!(
            "{},{},{},{},{},{},{}\n",
            m.merchant_id.0, row[0], row[1], row[2], row[3], row[4], row[5]
        ));
        for (acc, v) in t.iter_mut().zip(row) {
            *acc += v;
        }
    }
    merchants.push_str(&format!(
        "TOTAL,{},{},{},{},{},{}\n",
        t[0], t[1], t[2], t[3], t[4], t[5]
    ));
    files.push(write(&day.join("merchant_settlement.csv"), &merchants)?);

    // The bureau pays the card company for subsidies residents actually loaded; the
    // loaded columns grow as cards are loaded (the file is rewritten by each
    // `clearing run`), the rest is fixed by the day's clearing.
    let awards_fen: i64 = report.awards.iter().map(|a| a.amount_fen.get()).sum();
    let (loaded_count, loaded_fen) = (report.loaded.0, report.loaded.1.get());
    let bureau = format!(
        "business_date,txn_count,subsidy_fen,credit_count,credit_fen,loaded_count,loaded_fen,awards_fen,approved\n\
         {},{},{},{},{},{loaded_count},{loaded_fen},{awards_fen},{}\n\
         TOTAL,{},{},{},{},{loaded_count},{loaded_fen},{awards_fen},\n",
        s.business_date.get(),
        s.txn_count,
        s.subsidy_fen.get(),
        s.credit_count,
        s.credit_fen.get(),
        u8::from(s.approved),
        s.txn_count,
        s.subsidy_fen.get(),
        s.credit_count,
        s.credit_fen.get(),
    );
    files.push(write(&day.join("bureau_settlement.csv"), &bureau)?);

    // Organizer awards approved that day: paid by the bureau, never a card credit.
    let mut awards = String::from("award_id,merchant_id,show_date,kind,amount_fen\n");
    for a in &report.awards {
        let kind = if a.kind == 1 {
            "NATIONAL_TROUPE"
        } else {
            "NATIONAL_AWARD_WORK"
        };
        awards.push_str(&format!(
            "{},{},{},{kind},{}\n",
            a.award_id,
            a.merchant_id.0,
            a.show_date,
            a.amount_fen.get()
        ));
    }
    awards.push_str(&format!("TOTAL,{},,,{awards_fen}\n", report.awards.len()));
    files.push(write(&day.join("organizer_awards.csv"), &awards)?);

    let mut stats = String::from("district,category,txn_count,sales_fen,subsidy_fen\n");
    let mut t = [0i64; 3];
    for r in &report.statistics {
        stats.push_str(&format!(
            "{},{},{},{},{}\n",
            district_name(r.district),
            category_name(r.category),
            r.txn_count,
            r.sales_fen.get(),
            r.subsidy_fen.get()
        ));
        t[0] += r.txn_count;
        t[1] += r.sales_fen.get();
        t[2] += r.subsidy_fen.get();
    }
    stats.push_str(&format!("TOTAL,,{},{},{}\n", t[0], t[1], t[2]));
    files.push(write(&day.join("statistics.csv"), &stats)?);
    Ok(files)
}

/// The outcome of a day's clearing run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClearingSummary {
    /// The day.
    pub business_date: BusinessDate,
    /// False once the audit step released the credits.
    pub approved: bool,
    /// Stored transactions of the day.
    pub txn_count: i64,
    /// Purchase subsidies minus refund reversals.
    pub subsidy_fen: Fen,
    /// Cards credited.
    pub credit_count: i64,
    /// Total credited (the subsidy, less what cards owed from earlier refunds).
    pub credit_fen: Fen,
}

/// One credit of a day.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CreditRow {
    /// Its id.
    pub credit_id: wenxiao_protocol::CreditId,
    /// The card.
    pub card_no: CardNo,
    /// The amount.
    pub amount_fen: Fen,
}

/// One merchant's settlement of a day.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MerchantSettlement {
    /// The merchant.
    pub merchant_id: MerchantId,
    /// Stored purchases and refunds.
    pub txn_count: i64,
    /// Purchases, card part.
    pub sales_fen: Fen,
    /// Refunds.
    pub refunds_fen: Fen,
    /// Points redeemed, reimbursed to the merchant.
    pub points_fen: Fen,
    /// Subsidies earned by its sales.
    pub subsidy_fen: Fen,
}

/// One line of a day's statistics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatisticsRow {
    /// District code.
    pub district: i16,
    /// Category code.
    pub category: i16,
    /// Stored transactions.
    pub txn_count: i64,
    /// Purchases, card part.
    pub sales_fen: Fen,
    /// Subsidies.
    pub subsidy_fen: Fen,
}

/// Everything a cleared day produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClearingReport {
    /// The run.
    pub summary: ClearingSummary,
    /// Credits by id.
    pub credits: Vec<CreditRow>,
    /// Merchant settlements by merchant.
    pub merchants: Vec<MerchantSettlement>,
    /// Statistics by district and category.
    pub statistics: Vec<StatisticsRow>,
    /// Organizer awards approved on the day.
    pub awards: Vec<AwardRow>,
    /// Of the day's credits, those loaded onto cards so far: (count, amount). This grows
    /// as cards are loaded; everything else in the report is fixed by the run.
    pub loaded: (i64, Fen),
}

/// One approved award, for the bureau's file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AwardRow {
    /// Its id.
    pub award_id: i64,
    /// The organizer.
    pub merchant_id: MerchantId,
    /// The show's date.
    pub show_date: u32,
    /// 1 national-level troupe, 2 national-award work.
    pub kind: i16,
    /// The amount.
    pub amount_fen: Fen,
}
