#!/usr/bin/env python3
"""Writes protocol/tests/vectors.json from the contract, independently of the Rust code.

This is a second implementation of the v1 wire format and MACs (Python's struct and
hmac), so the Rust test that checks the vectors compares two implementations, not one
with itself. Run it from the repository root: python3 protocol/tests/gen_vectors.py
"""
import hashlib
import hmac
import json
import struct
import sys

DEVICE_KIND = {"POS": 1, "KIOSK": 2, "OTA_ENDPOINT": 3, "SIGNIN_READER": 4}
TXN_KIND = {"PURCHASE": 1, "SIGN_IN": 2, "TOP_UP": 3, "REFUND": 4}
ITEM = {"NONE": 0, "BOOK": 1, "FILM_DOMESTIC": 2, "FILM_FOREIGN": 3, "PERFORMANCE": 4, "OTHER": 5}
OUTCOME = {"LOADED": 1, "NOT_LOADED_RETRY": 2, "NOT_LOADED_FINAL": 3}
TXN_STATUS = {"STORED": 1, "DUPLICATE": 2, "REJECTED": 3}
AUTH_STATUS = {"APPROVED": 1, "DECLINED": 2}
RESULT_STATUS = {"RECORDED": 1, "DUPLICATE": 2, "REJECTED": 3}
ERROR_CODE = {
    "MALFORMED_FRAME": 1, "UNSUPPORTED_VERSION": 2, "UNKNOWN_TYPE": 3, "FRAME_TOO_LARGE": 4,
    "HELLO_REQUIRED": 5, "HELLO_TIMEOUT": 6, "AUTH_FAILED": 7, "DEVICE_UNKNOWN": 8,
    "DEVICE_DISABLED": 9, "SESSION_REPLACED": 10, "IDLE_TIMEOUT": 11, "TOO_MANY_IN_FLIGHT": 12,
    "RATE_LIMITED": 13, "SHUTTING_DOWN": 14, "STORE_UNAVAILABLE": 15, "UNEXPECTED_MESSAGE": 16,
}
REASON = {
    "NONE": 0, "SEQ_CONFLICT": 100, "CARD_COUNTER_REPLAY": 101, "INVALID_FIELD": 102,
    "KIND_NOT_ALLOWED": 103, "HOLD_INVALID": 104, "UNKNOWN_CREDIT": 105, "CREDIT_NOT_YOURS": 106,
    "BAD_MAC": 107, "CREDIT_IN_DOUBT": 108, "NOT_ELIGIBLE": 200, "BUDGET_EXHAUSTED": 201,
    "CARD_BLACKLISTED": 202, "MERCHANT_SUSPENDED": 203, "DAILY_LIMIT_REACHED": 204,
    "INSUFFICIENT_POINTS": 205, "POINTS_CAP_EXCEEDED": 206,
}

# (name, wire type) in payload order. Wire types: u8 u16 u32 u64 i64 bytes4 str date flag,
# ("enum8"|"enum16", table), and the list forms handled in pack().
SCHEMA = {
    "HELLO": (0x01, [("device_id", "u64"), ("kind", ("enum8", DEVICE_KIND)), ("last_seq", "u64"),
                     ("hotlist_version", "u32"), ("firmware", "str")]),
    "HEARTBEAT": (0x02, [("sent_at_ms", "i64")]),
    "TXN": (0x03, [("seq", "u64"), ("kind", ("enum8", TXN_KIND)), ("card_no", "u64"),
                   ("card_counter", "u32"), ("amount_fen", "i64"), ("list_price_fen", "i64"),
                   ("item", ("enum8", ITEM)), ("points_hold_id", "u64"), ("points_used", "u32"),
                   ("refund_of_seq", "u64"), ("occurred_at_ms", "i64"), ("tac", "bytes4")]),
    "POINTS_AUTH": (0x04, [("req_id", "u32"), ("card_no", "u64"), ("purchase_fen", "i64"),
                           ("points", "u32")]),
    "CARD_PRESENTED": (0x05, [("req_id", "u32"), ("card_no", "u64"), ("online_seq", "u16"),
                              ("balance_fen", "i64")]),
    "CREDIT_RESULT": (0x06, [("credit_id", "u64"), ("card_no", "u64"),
                             ("outcome", ("enum8", OUTCOME)), ("online_seq", "u16"),
                             ("balance_after_fen", "i64"), ("tac", "bytes4")]),
    "HOTLIST_ACK": (0x07, [("version", "u32")]),
    "LOAD_INIT": (0x08, [("credit_id", "u64"), ("card_no", "u64"), ("online_seq", "u16"),
                         ("balance_fen", "i64"), ("card_random", "bytes4"), ("mac1", "bytes4")]),
    "WELCOME": (0x41, [("session_id", "u64"), ("server_time_ms", "i64"), ("stored_seq", "u64"),
                       ("heartbeat_s", "u16"), ("max_in_flight", "u16"),
                       ("hotlist_version", "u32")]),
    "HEARTBEAT_ACK": (0x42, [("sent_at_ms", "i64"), ("server_time_ms", "i64")]),
    "TXN_ACK": (0x43, [("seq", "u64"), ("status", ("enum8", TXN_STATUS)),
                       ("reason", ("enum16", REASON)), ("subsidy_fen", "i64"),
                       ("points_awarded", "u32")]),
    "POINTS_AUTH_RESULT": (0x44, [("req_id", "u32"), ("status", ("enum8", AUTH_STATUS)),
                                  ("reason", ("enum16", REASON)), ("hold_id", "u64"),
                                  ("points_approved", "u32"), ("points_balance", "u32"),
                                  ("expires_at_ms", "i64")]),
    "CREDIT_OFFER": (0x45, [("req_id", "u32"), ("credits", "credits")]),
    "CREDIT_PUSH": (0x46, [("credit_id", "u64"), ("card_no", "u64"), ("amount_fen", "i64"),
                           ("business_date", "date")]),
    "CREDIT_RESULT_ACK": (0x47, [("credit_id", "u64"), ("status", ("enum8", RESULT_STATUS)),
                                 ("reason", ("enum16", REASON))]),
    "HOTLIST_UPDATE": (0x48, [("version", "u32"), ("base_version", "u32"), ("last", "u8"),
                              ("add", "cards"), ("remove", "cards")]),
    "LOAD_AUTH": (0x49, [("credit_id", "u64"), ("status", ("enum8", AUTH_STATUS)),
                         ("reason", ("enum16", REASON)), ("host_time_ms", "i64"),
                         ("mac2", "bytes4")]),
    "ERROR": (0x4E, [("code", ("enum16", ERROR_CODE)), ("fatal", "u8"), ("message", "str")]),
    "DRAIN": (0x4F, [("reconnect_after_ms", "u32")]),
}

SAFE = 2 ** 53


def num(v):
    """A JSON integer as the vector format wants it: a string beyond 2^53."""
    return str(v) if abs(v) > SAFE else v


def as_int(v):
    return int(v) if isinstance(v, str) else v


def pack_field(kind, v):
    if isinstance(kind, tuple):
        enum, table = kind
        return struct.pack(">B" if enum == "enum8" else ">H", table[v])
    if kind == "u8":
        return struct.pack(">B", v)
    if kind == "u16":
        return struct.pack(">H", v)
    if kind in ("u32", "date"):
        return struct.pack(">I", v)
    if kind == "u64":
        return struct.pack(">Q", as_int(v))
    if kind == "i64":
        return struct.pack(">q", as_int(v))
    if kind == "bytes4":
        b = bytes.fromhex(v)
        assert len(b) == 4
        return b
    if kind == "str":
        b = v.encode("utf-8")
        return struct.pack(">H", len(b)) + b
    if kind == "cards":
        return struct.pack(">H", len(v)) + b"".join(struct.pack(">Q", as_int(c)) for c in v)
    if kind == "credits":
        out = struct.pack(">B", len(v))
        for c in v:
            out += struct.pack(">QqI", as_int(c["credit_id"]), as_int(c["amount_fen"]),
                               c["business_date"])
        return out
    raise ValueError(kind)


def frame(type_code, payload, version=1, magic=b"WX"):
    return magic + bytes([version, type_code]) + struct.pack(">I", len(payload)) + payload


def pack(msg_type, fields):
    code, schema = SCHEMA[msg_type]
    assert set(fields) == {n for n, _ in schema}, (msg_type, set(fields))
    payload = b"".join(pack_field(k, fields[n]) for n, k in schema)
    return frame(code, payload)


def valid(name, msg_type, fields):
    return {"name": name, "type": msg_type, "fields": fields, "hex": pack(msg_type, fields).hex()}


def invalid(name, raw, error):
    return {"name": name, "hex": raw.hex(), "error": error}


# --- MACs ----------------------------------------------------------------------------------

def card_key(master_hex, card_no):
    return hmac.new(bytes.fromhex(master_hex), struct.pack(">Q", card_no), hashlib.sha256).digest()


def mac(key, *parts):
    return hmac.new(key, b"".join(parts), hashlib.sha256).digest()[:4]


def txn_tac(master, f):
    k = card_key(master, as_int(f["card_no"]))
    return mac(k, struct.pack(">QIBqQq", as_int(f["card_no"]), f["card_counter"],
                              TXN_KIND[f["kind"]], f["amount_fen"], as_int(f["device_id"]),
                              f["occurred_at_ms"]))


def mac1(master, f):
    k = card_key(master, as_int(f["card_no"]))
    return mac(k, struct.pack(">QHqqQ", as_int(f["card_no"]), f["online_seq"], f["balance_fen"],
                              f["amount_fen"], as_int(f["device_id"])),
               bytes.fromhex(f["card_random"]))


def mac2(master, f):
    k = card_key(master, as_int(f["card_no"]))
    return mac(k, struct.pack(">QHqQq", as_int(f["card_no"]), f["online_seq"], f["amount_fen"],
                              as_int(f["device_id"]), f["host_time_ms"]),
               bytes.fromhex(f["card_random"]))


def load_tac(master, f):
    k = card_key(master, as_int(f["card_no"]))
    return mac(k, struct.pack(">QHqqQq", as_int(f["card_no"]), (f["online_seq"] + 1) & 0xFFFF,
                              f["balance_after_fen"], f["amount_fen"], as_int(f["device_id"]),
                              f["host_time_ms"]))


PURCHASE_MASTER = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f"
LOAD_MASTER = "f0e1d2c3b4a5968778695a4b3c2d1e0f00112233445566778899aabbccddeeff"
T0 = 1_795_000_000_000  # 2026-11-17T07:46:40Z
DEVICE = 310_100_000_123
CARD = 3_101_000_012_345_678
BIG = 18_446_744_073_709_551_615  # u64::MAX, written as a string


def main():
    vs = []
    # --- valid frames, device -> gateway ---------------------------------------------------
    vs.append(valid("hello_pos", "HELLO", {
        "device_id": DEVICE, "kind": "POS", "last_seq": 0, "hotlist_version": 7,
        "firmware": "wx-pos 1.4.2"}))
    vs.append(valid("hello_ota_utf8_firmware_max_ids", "HELLO", {
        "device_id": str(BIG), "kind": "OTA_ENDPOINT", "last_seq": str(BIG),
        "hotlist_version": 4294967295, "firmware": "空中圈存 OTA v2"}))
    vs.append(valid("hello_firmware_1024_bytes", "HELLO", {
        "device_id": 2, "kind": "SIGNIN_READER", "last_seq": 5, "hotlist_version": 0,
        "firmware": "k" * 1024}))
    vs.append(valid("hello_kiosk_empty_firmware", "HELLO", {
        "device_id": 3, "kind": "KIOSK", "last_seq": 1, "hotlist_version": 1, "firmware": ""}))
    vs.append(valid("heartbeat", "HEARTBEAT", {"sent_at_ms": T0}))
    vs.append(valid("heartbeat_negative_time", "HEARTBEAT", {"sent_at_ms": -1}))

    purchase = {"card_no": CARD, "card_counter": 41, "kind": "PURCHASE", "amount_fen": 8800,
                "device_id": DEVICE, "occurred_at_ms": T0}
    purchase_tac = txn_tac(PURCHASE_MASTER, purchase).hex()
    vs.append(valid("txn_purchase_book", "TXN", {
        "seq": 1, "kind": "PURCHASE", "card_no": CARD, "card_counter": 41, "amount_fen": 8800,
        "list_price_fen": 0, "item": "BOOK", "points_hold_id": 0, "points_used": 0,
        "refund_of_seq": 0, "occurred_at_ms": T0, "tac": purchase_tac}))
    vs.append(valid("txn_purchase_film_with_points", "TXN", {
        "seq": 2, "kind": "PURCHASE", "card_no": CARD, "card_counter": 42, "amount_fen": 3000,
        "list_price_fen": 4000, "item": "FILM_DOMESTIC", "points_hold_id": 77,
        "points_used": 100, "refund_of_seq": 0, "occurred_at_ms": T0 + 1, "tac": "01020304"}))
    vs.append(valid("txn_sign_in", "TXN", {
        "seq": 3, "kind": "SIGN_IN", "card_no": CARD, "card_counter": 43, "amount_fen": 0,
        "list_price_fen": 0, "item": "NONE", "points_hold_id": 0, "points_used": 0,
        "refund_of_seq": 0, "occurred_at_ms": T0 + 2, "tac": "a0b0c0d0"}))
    vs.append(valid("txn_top_up", "TXN", {
        "seq": 4, "kind": "TOP_UP", "card_no": CARD, "card_counter": 9, "amount_fen": 10000,
        "list_price_fen": 0, "item": "NONE", "points_hold_id": 0, "points_used": 0,
        "refund_of_seq": 0, "occurred_at_ms": T0 + 3, "tac": "ffffffff"}))
    vs.append(valid("txn_refund_performance_max_seq", "TXN", {
        "seq": str(BIG), "kind": "REFUND", "card_no": CARD, "card_counter": 10,
        "amount_fen": 18000, "list_price_fen": 20000, "item": "PERFORMANCE",
        "points_hold_id": 0, "points_used": 0, "refund_of_seq": 2, "occurred_at_ms": T0 + 4,
        "tac": "00000000"}))
    vs.append(valid("txn_foreign_film_other_negative_amount", "TXN", {
        "seq": 9, "kind": "PURCHASE", "card_no": 1, "card_counter": 4294967295,
        "amount_fen": "-9223372036854775808", "list_price_fen": "9223372036854775807",
        "item": "FILM_FOREIGN", "points_hold_id": str(BIG), "points_used": 4294967295,
        "refund_of_seq": 0, "occurred_at_ms": 0, "tac": "12345678"}))
    vs.append(valid("txn_item_other", "TXN", {
        "seq": 10, "kind": "PURCHASE", "card_no": CARD, "card_counter": 50, "amount_fen": 1,
        "list_price_fen": 0, "item": "OTHER", "points_hold_id": 0, "points_used": 0,
        "refund_of_seq": 0, "occurred_at_ms": T0, "tac": "0badcafe"}))
    vs.append(valid("points_auth", "POINTS_AUTH", {
        "req_id": 17, "card_no": CARD, "purchase_fen": 5000, "points": 250}))
    vs.append(valid("card_presented", "CARD_PRESENTED", {
        "req_id": 18, "card_no": CARD, "online_seq": 65535, "balance_fen": 12345}))
    for outcome in OUTCOME:
        vs.append(valid(f"credit_result_{outcome.lower()}", "CREDIT_RESULT", {
            "credit_id": 900001, "card_no": CARD, "outcome": outcome, "online_seq": 12,
            "balance_after_fen": 23345, "tac": "cafebabe"}))
    vs.append(valid("hotlist_ack", "HOTLIST_ACK", {"version": 8}))
    vs.append(valid("load_init", "LOAD_INIT", {
        "credit_id": 900001, "card_no": CARD, "online_seq": 11, "balance_fen": 12345,
        "card_random": "5a5a0001", "mac1": "d00dfeed"}))
    # --- valid frames, gateway -> device ---------------------------------------------------
    vs.append(valid("welcome", "WELCOME", {
        "session_id": 1, "server_time_ms": T0, "stored_seq": 41, "heartbeat_s": 30,
        "max_in_flight": 64, "hotlist_version": 8}))
    vs.append(valid("welcome_nothing_stored", "WELCOME", {
        "session_id": str(BIG), "server_time_ms": T0, "stored_seq": 0, "heartbeat_s": 65535,
        "max_in_flight": 1, "hotlist_version": 0}))
    vs.append(valid("heartbeat_ack", "HEARTBEAT_ACK", {"sent_at_ms": T0, "server_time_ms": T0 + 3}))
    for status, reason, subsidy, points in [
            ("STORED", "NONE", 880, 0), ("STORED", "NOT_ELIGIBLE", 0, 0),
            ("STORED", "BUDGET_EXHAUSTED", 0, 0), ("STORED", "NONE", 0, 10),
            ("DUPLICATE", "NONE", 880, 0), ("REJECTED", "SEQ_CONFLICT", 0, 0),
            ("REJECTED", "BAD_MAC", 0, 0), ("REJECTED", "CARD_COUNTER_REPLAY", 0, 0)]:
        vs.append(valid(f"txn_ack_{status.lower()}_{reason.lower()}_{points}", "TXN_ACK", {
            "seq": 7, "status": status, "reason": reason, "subsidy_fen": subsidy,
            "points_awarded": points}))
    vs.append(valid("points_auth_result_approved", "POINTS_AUTH_RESULT", {
        "req_id": 17, "status": "APPROVED", "reason": "NONE", "hold_id": 77,
        "points_approved": 250, "points_balance": 30, "expires_at_ms": T0 + 600_000}))
    vs.append(valid("points_auth_result_declined", "POINTS_AUTH_RESULT", {
        "req_id": 17, "status": "DECLINED", "reason": "POINTS_CAP_EXCEEDED", "hold_id": 0,
        "points_approved": 0, "points_balance": 280, "expires_at_ms": 0}))
    vs.append(valid("credit_offer_empty", "CREDIT_OFFER", {"req_id": 18, "credits": []}))
    vs.append(valid("credit_offer_one", "CREDIT_OFFER", {"req_id": 18, "credits": [
        {"credit_id": 900001, "amount_fen": 880, "business_date": 20261126}]}))
    vs.append(valid("credit_offer_max_16_leap_day", "CREDIT_OFFER", {"req_id": 4294967295, "credits": [
        {"credit_id": 900000 + i, "amount_fen": 100 * i, "business_date": 20280229}
        for i in range(16)]}))
    vs.append(valid("credit_push", "CREDIT_PUSH", {
        "credit_id": 900002, "card_no": 8_613_800_000_000, "amount_fen": 1500,
        "business_date": 20261126}))
    for status, reason in [("RECORDED", "NONE"), ("DUPLICATE", "NONE"),
                           ("REJECTED", "UNKNOWN_CREDIT"), ("REJECTED", "CREDIT_NOT_YOURS")]:
        vs.append(valid(f"credit_result_ack_{status.lower()}_{reason.lower()}",
                        "CREDIT_RESULT_ACK", {"credit_id": 900001, "status": status,
                                              "reason": reason}))
    vs.append(valid("hotlist_update_empty_full_list", "HOTLIST_UPDATE", {
        "version": 1, "base_version": 0, "last": 1, "add": [], "remove": []}))
    vs.append(valid("hotlist_update_delta", "HOTLIST_UPDATE", {
        "version": 9, "base_version": 8, "last": 1, "add": [CARD, 1],
        "remove": [str(BIG)]}))
    vs.append(valid("hotlist_update_chunk_not_last", "HOTLIST_UPDATE", {
        "version": 9, "base_version": 0, "last": 0, "add": [5, 6, 7], "remove": []}))
    vs.append(valid("hotlist_update_max_8190_cards", "HOTLIST_UPDATE", {
        "version": 10, "base_version": 0, "last": 1,
        "add": [3_101_000_000_000_000 + i for i in range(8000)],
        "remove": [3_101_000_100_000_000 + i for i in range(190)]}))
    vs.append(valid("load_auth_approved", "LOAD_AUTH", {
        "credit_id": 900001, "status": "APPROVED", "reason": "NONE", "host_time_ms": T0,
        "mac2": "11223344"}))
    vs.append(valid("load_auth_declined_in_doubt", "LOAD_AUTH", {
        "credit_id": 900001, "status": "DECLINED", "reason": "CREDIT_IN_DOUBT",
        "host_time_ms": T0, "mac2": "00000000"}))
    for code in ERROR_CODE:
        fatal = 0 if code in ("TOO_MANY_IN_FLIGHT", "RATE_LIMITED", "SHUTTING_DOWN",
                              "STORE_UNAVAILABLE") else 1
        vs.append(valid(f"error_{code.lower()}", "ERROR", {
            "code": code, "fatal": fatal, "message": code.lower().replace("_", " ")}))
    vs.append(valid("error_empty_message", "ERROR", {
        "code": "MALFORMED_FRAME", "fatal": 1, "message": ""}))
    vs.append(valid("drain", "DRAIN", {"reconnect_after_ms": 30_000}))

    # --- invalid frames --------------------------------------------------------------------
    hb = pack("HEARTBEAT", {"sent_at_ms": T0})
    vs.append(invalid("bad_magic_first_byte", b"XW" + hb[2:], "BAD_MAGIC"))
    vs.append(invalid("bad_magic_second_byte_only_two_bytes", b"WY", "BAD_MAGIC"))
    vs.append(invalid("version_2", frame(0x02, hb[8:], version=2), "UNSUPPORTED_VERSION"))
    vs.append(invalid("version_0", frame(0x02, hb[8:], version=0), "UNSUPPORTED_VERSION"))
    vs.append(invalid("unknown_type_0x09", frame(0x09, b""), "UNKNOWN_TYPE"))
    vs.append(invalid("unknown_type_0x4a_header_only", b"WX\x01\x4a", "UNKNOWN_TYPE"))
    vs.append(invalid("frame_too_large_65537", b"WX\x01\x48" + struct.pack(">I", 65537),
                      "FRAME_TOO_LARGE"))
    vs.append(invalid("frame_too_large_u32_max", b"WX\x01\x03\xff\xff\xff\xff",
                      "FRAME_TOO_LARGE"))
    vs.append(invalid("heartbeat_payload_7_bytes", frame(0x02, hb[8:15]), "PAYLOAD_TOO_SHORT"))
    vs.append(invalid("heartbeat_payload_9_bytes", frame(0x02, hb[8:] + b"\0"), "PAYLOAD_TOO_LONG"))
    txn = bytes.fromhex(vs[6]["hex"])
    vs.append(invalid("txn_payload_69_bytes", frame(0x03, txn[8:-1]), "PAYLOAD_TOO_SHORT"))
    vs.append(invalid("txn_payload_71_bytes", frame(0x03, txn[8:] + b"\0"), "PAYLOAD_TOO_LONG"))
    hello = pack("HELLO", {"device_id": 1, "kind": "POS", "last_seq": 0, "hotlist_version": 0,
                           "firmware": "abc"})
    # The firmware string claims 4 bytes but only 3 follow.
    short = bytearray(hello[8:])
    short[21:23] = struct.pack(">H", 4)
    vs.append(invalid("hello_string_runs_past_payload", frame(0x01, bytes(short)),
                      "PAYLOAD_TOO_SHORT"))
    long_ = bytearray(hello[8:])
    long_[21:23] = struct.pack(">H", 2)
    vs.append(invalid("hello_bytes_after_string", frame(0x01, bytes(long_)), "PAYLOAD_TOO_LONG"))
    vs.append(invalid("hello_string_1025_bytes",
                      frame(0x01, hello[8:29] + struct.pack(">H", 1025) + b"k" * 1025),
                      "PAYLOAD_TOO_LONG"))
    vs.append(invalid("error_string_length_1025_in_short_payload",
                      frame(0x4E, struct.pack(">HBH", 1, 1, 1025) + b"k" * 10),
                      "STRING_TOO_LONG"))
    vs.append(invalid("hello_firmware_not_utf8",
                      frame(0x01, hello[8:29] + struct.pack(">H", 2) + b"\xc3\x28"), "BAD_UTF8"))
    bad_kind = bytearray(hello[8:])
    bad_kind[8] = 5
    vs.append(invalid("hello_kind_5", frame(0x01, bytes(bad_kind)), "BAD_ENUM"))
    bad_item = bytearray(txn[8:])
    bad_item[37] = 6
    vs.append(invalid("txn_item_6", frame(0x03, bytes(bad_item)), "BAD_ENUM"))
    bad_txn_kind = bytearray(txn[8:])
    bad_txn_kind[8] = 0
    vs.append(invalid("txn_kind_0", frame(0x03, bytes(bad_txn_kind)), "BAD_ENUM"))
    vs.append(invalid("txn_ack_reason_999",
                      frame(0x43, struct.pack(">QBHqI", 1, 1, 999, 0, 0)), "BAD_ENUM"))
    vs.append(invalid("error_fatal_2",
                      frame(0x4E, struct.pack(">HBH", 1, 2, 0)), "BAD_ENUM"))
    vs.append(invalid("error_code_17",
                      frame(0x4E, struct.pack(">HBH", 17, 1, 0)), "BAD_ENUM"))
    vs.append(invalid("hotlist_last_2",
                      frame(0x48, struct.pack(">IIBHH", 1, 0, 2, 0, 0)), "BAD_ENUM"))
    vs.append(invalid("credit_result_outcome_4",
                      frame(0x06, struct.pack(">QQBHq", 1, 1, 4, 0, 0) + b"\0" * 4), "BAD_ENUM"))
    vs.append(invalid("credit_offer_count_17",
                      frame(0x45, struct.pack(">IB", 1, 17) +
                            struct.pack(">QqI", 1, 1, 20261126) * 16), "COUNT_TOO_LARGE"))
    vs.append(invalid("credit_offer_count_2_with_one_entry",
                      frame(0x45, struct.pack(">IB", 1, 2) + struct.pack(">QqI", 1, 1, 20261126)),
                      "PAYLOAD_TOO_SHORT"))
    vs.append(invalid("hotlist_add_count_beyond_payload",
                      frame(0x48, struct.pack(">IIBHH", 1, 0, 1, 5, 0) + b"\0" * 8),
                      "PAYLOAD_TOO_SHORT"))
    vs.append(invalid("credit_push_date_20261131",
                      frame(0x46, struct.pack(">QQqI", 1, 1, 1, 20261131)), "BAD_DATE"))
    vs.append(invalid("credit_offer_date_20270229",
                      frame(0x45, struct.pack(">IB", 1, 1) + struct.pack(">QqI", 1, 1, 20270229)),
                      "BAD_DATE"))
    zero_seq = bytearray(txn[8:])
    zero_seq[0:8] = b"\0" * 8
    vs.append(invalid("txn_seq_0", frame(0x03, bytes(zero_seq)), "OUT_OF_RANGE"))
    vs.append(invalid("txn_ack_seq_0", frame(0x43, struct.pack(">QBHqI", 0, 1, 0, 0, 0)),
                      "OUT_OF_RANGE"))
    vs.append(invalid("truncated_header", hb[:5], "TRUNCATED"))
    vs.append(invalid("truncated_payload", hb[:-1], "TRUNCATED"))

    # --- MACs ------------------------------------------------------------------------------
    vs.append({"name": "txn_tac_purchase", "mac": "TXN_TAC", "master_key": PURCHASE_MASTER,
               "fields": purchase, "expected": purchase_tac})
    signin = {"card_no": CARD, "card_counter": 43, "kind": "SIGN_IN", "amount_fen": 0,
              "device_id": 2, "occurred_at_ms": T0 + 2}
    vs.append({"name": "txn_tac_sign_in", "mac": "TXN_TAC", "master_key": PURCHASE_MASTER,
               "fields": signin, "expected": txn_tac(PURCHASE_MASTER, signin).hex()})
    big = {"card_no": str(BIG), "card_counter": 4294967295, "kind": "REFUND",
           "amount_fen": -1, "device_id": str(BIG), "occurred_at_ms": -1}
    vs.append({"name": "txn_tac_extremes", "mac": "TXN_TAC", "master_key": PURCHASE_MASTER,
               "fields": big, "expected": txn_tac(PURCHASE_MASTER, big).hex()})
    m1 = {"card_no": CARD, "online_seq": 11, "balance_fen": 12345, "amount_fen": 880,
          "device_id": DEVICE, "card_random": "5a5a0001"}
    vs.append({"name": "mac1", "mac": "MAC1", "master_key": LOAD_MASTER, "fields": m1,
               "expected": mac1(LOAD_MASTER, m1).hex()})
    m2 = {"card_no": CARD, "online_seq": 11, "amount_fen": 880, "device_id": DEVICE,
          "host_time_ms": T0, "card_random": "5a5a0001"}
    vs.append({"name": "mac2", "mac": "MAC2", "master_key": LOAD_MASTER, "fields": m2,
               "expected": mac2(LOAD_MASTER, m2).hex()})
    lt = {"card_no": CARD, "online_seq": 11, "balance_after_fen": 13225, "amount_fen": 880,
          "device_id": DEVICE, "host_time_ms": T0}
    vs.append({"name": "load_tac_online_seq_11_packs_12", "mac": "LOAD_TAC",
               "master_key": LOAD_MASTER, "fields": lt, "expected": load_tac(LOAD_MASTER, lt).hex()})
    short_key = "00112233445566778899aabbccddeeff"
    vs.append({"name": "load_tac_16_byte_master_key", "mac": "LOAD_TAC", "master_key": short_key,
               "fields": lt, "expected": load_tac(short_key, lt).hex()})

    json.dump(vs, sys.stdout if len(sys.argv) < 2 else open(sys.argv[1], "w"), indent=1,
              ensure_ascii=False)


if __name__ == "__main__":
    main()
