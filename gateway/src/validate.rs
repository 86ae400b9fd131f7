//! Field validation of a TXN against the device that sent it and its merchant: pure
//! functions, no clock, no I/O. A failure is a REJECTED reason, recorded by the store.

use crate::config::TxnConfig;
use crate::registry::{Category, Device, Merchant};
use wenxiao_protocol::mac::{KeyPurpose, MasterKeys, TxnTacInput, mac_eq};
use wenxiao_protocol::{DeviceKind, Fen, Item, Reason, Txn, TxnKind};

/// Checks a TXN; `Err` carries the REJECTED reason. Order: the TAC first (a TXN whose
/// TAC fails is not the card's, so nothing else in it is worth judging), then whether
/// this device and merchant may send it at all, then its fields.
pub fn check_txn(
    txn: &Txn,
    device: &Device,
    merchant: Option<&Merchant>,
    limits: &TxnConfig,
    keys: &MasterKeys,
) -> Result<(), Reason> {
    let expected = TxnTacInput {
        card_no: txn.card_no,
        card_counter: txn.card_counter,
        kind: txn.kind,
        amount_fen: txn.amount_fen,
        device_id: device.device_id,
        occurred_at_ms: txn.occurred_at_ms,
    }
    .tac(&keys.card_key(KeyPurpose::Purchase, txn.card_no));
    if !mac_eq(expected, txn.tac) {
        return Err(Reason::BadMac);
    }
    check_allowed(txn, device, merchant)?;
    check_fields(txn, merchant.map(|m| m.category), limits)
}

/// TXN kinds by device kind, and items by merchant category.
fn check_allowed(txn: &Txn, device: &Device, merchant: Option<&Merchant>) -> Result<(), Reason> {
    let category = merchant.map(|m| m.category);
    let kind_ok = match (txn.kind, device.kind) {
        (TxnKind::Purchase | TxnKind::Refund, DeviceKind::Pos) => true,
        (TxnKind::TopUp, DeviceKind::Kiosk) => true,
        (TxnKind::SignIn, DeviceKind::SigninReader) => category == Some(Category::PublicVenue),
        _ => false,
    };
    let item_ok = match (txn.kind, category) {
        (TxnKind::SignIn | TxnKind::TopUp, _) => txn.item == Item::None,
        (_, Some(Category::Bookstore)) => matches!(txn.item, Item::Book | Item::Other),
        (_, Some(Category::Cinema)) => {
            matches!(
                txn.item,
                Item::FilmDomestic | Item::FilmForeign | Item::Other
            )
        }
        (_, Some(Category::PerformanceVenue)) => {
            matches!(txn.item, Item::Performance | Item::Other)
        }
        // Organizers, public venues and outlets sell nothing through POS terminals.
        _ => false,
    };
    if kind_ok && item_ok {
        Ok(())
    } else {
        Err(Reason::KindNotAllowed)
    }
}

fn within(v: Fen, min: i64, max: i64) -> bool {
    (min..=max).contains(&v.get())
}

fn check_fields(txn: &Txn, category: Option<Category>, limits: &TxnConfig) -> Result<(), Reason> {
    let money_ok = match txn.kind {
        TxnKind::Purchase | TxnKind::Refund => within(txn.amount_fen, 1, limits.purchase_fen_max),
        TxnKind::TopUp => within(txn.amount_fen, 1, limits.top_up_fen_max),
        TxnKind::SignIn => txn.amount_fen == Fen::ZERO,
    };
    // A list price is the subsidy base of cinemas (agreed price) and performance venues
    // (regular price): required for what earns subsidy there, meaningless elsewhere.
    let list_ok = match (category, txn.item) {
        (Some(Category::Cinema), Item::FilmDomestic)
        | (Some(Category::PerformanceVenue), Item::Performance) => {
            within(txn.list_price_fen, 1, limits.list_price_fen_max)
        }
        (Some(Category::Cinema | Category::PerformanceVenue), _) => {
            within(txn.list_price_fen, 0, limits.list_price_fen_max)
        }
        _ => txn.list_price_fen == Fen::ZERO,
    };
    let refund_ok = match txn.kind {
        TxnKind::Refund => txn.refund_of_seq.is_some_and(|s| s < txn.seq),
        _ => txn.refund_of_seq.is_none(),
    };
    // Points pay only purchases, and only through a hold.
    let points_ok = match txn.kind {
        TxnKind::Purchase => (txn.points_used.get() > 0) == txn.points_hold_id.is_some(),
        _ => txn.points_used.get() == 0 && txn.points_hold_id.is_none(),
    };
    if money_ok && list_ok && refund_ok && points_ok {
        Ok(())
    } else {
        Err(Reason::InvalidField)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::{District, MerchantId};
    use wenxiao_protocol::{
        Bytes4, CardCounter, CardNo, DeviceId, HoldId, Points, Seq, UnixMillis,
    };

    fn keys() -> MasterKeys {
        crate::config::Config::default().master_keys().unwrap()
    }

    fn device(kind: DeviceKind) -> Device {
        Device {
            device_id: DeviceId(7),
            kind,
            merchant_id: Some(MerchantId(1)),
            operator: None,
            active: true,
        }
    }

    fn merchant(category: Category) -> Merchant {
        Merchant {
            merchant_id: MerchantId(1),
            name: "m".into(),
            category,
            district: District::Erqi,
            active: true,
            place: None,
        }
    }

    fn signed(mut t: Txn) -> Txn {
        t.tac = TxnTacInput {
            card_no: t.card_no,
            card_counter: t.card_counter,
            kind: t.kind,
            amount_fen: t.amount_fen,
            device_id: DeviceId(7),
            occurred_at_ms: t.occurred_at_ms,
        }
        .tac(&keys().card_key(KeyPurpose::Purchase, t.card_no));
        t
    }

    fn purchase(item: Item, amount: i64, list: i64) -> Txn {
        signed(Txn {
            seq: Seq::new(5).unwrap(),
            kind: TxnKind::Purchase,
            card_no: CardNo(42),
            card_counter: CardCounter(1),
            amount_fen: Fen(amount),
            list_price_fen: Fen(list),
            item,
            points_hold_id: None,
            points_used: Points(0),
            refund_of_seq: None,
            occurred_at_ms: UnixMillis(1),
            tac: Bytes4::ZERO,
        })
    }

    fn check(t: &Txn, kind: DeviceKind, category: Category) -> Result<(), Reason> {
        check_txn(
            t,
            &device(kind),
            Some(&merchant(category)),
            &TxnConfig::default(),
            &keys(),
        )
    }

    #[test]
    fn a_valid_book_purchase_passes() {
        assert_eq!(
            check(
                &purchase(Item::Book, 8800, 0),
                DeviceKind::Pos,
                Category::Bookstore
            ),
            Ok(())
        );
    }

    #[test]
    fn a_tampered_amount_is_bad_mac() {
        let mut t = purchase(Item::Book, 8800, 0);
        t.amount_fen = Fen(1);
        assert_eq!(
            check(&t, DeviceKind::Pos, Category::Bookstore),
            Err(Reason::BadMac)
        );
    }

    #[test]
    fn kinds_and_items_must_fit_device_and_merchant() {
        let film = purchase(Item::FilmDomestic, 3000, 4000);
        assert_eq!(
            check(&film, DeviceKind::Pos, Category::Bookstore),
            Err(Reason::KindNotAllowed)
        );
        assert_eq!(check(&film, DeviceKind::Pos, Category::Cinema), Ok(()));
        assert_eq!(
            check(&film, DeviceKind::Kiosk, Category::Cinema),
            Err(Reason::KindNotAllowed)
        );
        let mut top_up = purchase(Item::None, 10_000, 0);
        top_up.kind = TxnKind::TopUp;
        let top_up = signed(top_up);
        assert_eq!(
            check(&top_up, DeviceKind::Kiosk, Category::ServiceOutlet),
            Ok(())
        );
        assert_eq!(
            check(&top_up, DeviceKind::Pos, Category::Bookstore),
            Err(Reason::KindNotAllowed)
        );
        let mut sign_in = purchase(Item::None, 0, 0);
        sign_in.kind = TxnKind::SignIn;
        let sign_in = signed(sign_in);
        assert_eq!(
            check(&sign_in, DeviceKind::SigninReader, Category::PublicVenue),
            Ok(())
        );
        assert_eq!(
            check(&sign_in, DeviceKind::Pos, Category::PublicVenue),
            Err(Reason::KindNotAllowed)
        );
    }

    #[test]
    fn fields_out_of_range_are_invalid() {
        for t in [
            purchase(Item::Book, 0, 0),
            purchase(Item::Book, -5, 0),
            purchase(Item::Book, 5_000_001, 0),
            purchase(Item::Book, 100, 100),
        ] {
            assert_eq!(
                check(&t, DeviceKind::Pos, Category::Bookstore),
                Err(Reason::InvalidField),
                "{t:?}"
            );
        }
        // A domestic film needs its agreed price; a performance its regular price.
        assert_eq!(
            check(
                &purchase(Item::FilmDomestic, 3000, 0),
                DeviceKind::Pos,
                Category::Cinema
            ),
            Err(Reason::InvalidField)
        );
        let mut refund = purchase(Item::Book, 100, 0);
        refund.kind = TxnKind::Refund;
        let bare = signed(refund);
        assert_eq!(
            check(&bare, DeviceKind::Pos, Category::Bookstore),
            Err(Reason::InvalidField)
        );
        refund.refund_of_seq = Seq::new(4);
        assert_eq!(
            check(&signed(refund), DeviceKind::Pos, Category::Bookstore),
            Ok(())
        );
        let mut pts = purchase(Item::Book, 100, 0);
        pts.points_used = Points(10);
        assert_eq!(
            check(&signed(pts), DeviceKind::Pos, Category::Bookstore),
            Err(Reason::InvalidField)
        );
        pts.points_hold_id = HoldId::new(3);
        assert_eq!(
            check(&signed(pts), DeviceKind::Pos, Category::Bookstore),
            Ok(())
        );
    }
}
