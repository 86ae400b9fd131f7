#!/usr/bin/env python3
"""Writes the pilot's default registry (merchants.csv, devices.csv) deterministically.

Counts are the pilot plan's: 70 bookstores, 20 cinemas, 10 performance venues,
5 performance organizers, 18 public venues (17 named in the plan, which states 18; the
18th, the Zhengdong New District library, is our completion), spread over the 10 areas,
plus 10 card-company service outlets that host the top-up kiosks, and one OTA endpoint
per mobile operator. Run from the repository root:
    python3 config/registry/generate.py config/registry
"""
import csv
import os
import sys

AREAS = ["ZHONGYUAN", "ERQI", "GUANCHENG", "JINSHUI", "SHANGJIE", "HUIJI",
         "ECONOMIC_DEVELOPMENT_ZONE", "HIGH_TECH_ZONE", "ZHENGDONG_NEW_DISTRICT",
         "AIRPORT_ECONOMY_ZONE"]
AREA_ZH = {"ZHONGYUAN": "中原区", "ERQI": "二七区", "GUANCHENG": "管城回族区", "JINSHUI": "金水区",
           "SHANGJIE": "上街区", "HUIJI": "惠济区", "ECONOMIC_DEVELOPMENT_ZONE": "经济开发区",
           "HIGH_TECH_ZONE": "高新区", "ZHENGDONG_NEW_DISTRICT": "郑东新区",
           "AIRPORT_ECONOMY_ZONE": "航空港区"}
PUBLIC_VENUES = [
    ("郑州图书馆", "JINSHUI"), ("郑州美术馆", "JINSHUI"), ("郑州文化馆", "JINSHUI"),
    ("中原区图书馆", "ZHONGYUAN"), ("中原区文化馆", "ZHONGYUAN"),
    ("二七区图书馆", "ERQI"), ("二七区文化馆", "ERQI"),
    ("金水区图书馆", "JINSHUI"), ("金水区文化馆", "JINSHUI"),
    ("管城回族区图书馆", "GUANCHENG"), ("管城回族区文化馆", "GUANCHENG"),
    ("惠济区图书馆", "HUIJI"), ("惠济区文化馆", "HUIJI"),
    ("郑州经济开发区图书馆", "ECONOMIC_DEVELOPMENT_ZONE"),
    ("郑州经济开发区文化馆", "ECONOMIC_DEVELOPMENT_ZONE"),
    ("上街区图书馆", "SHANGJIE"), ("上街区文化馆", "SHANGJIE"),
    ("郑东新区图书馆", "ZHENGDONG_NEW_DISTRICT"),
]
# Each area's centre (latitude, longitude, degrees): merchants are placed within about
# 2 km of it, deterministically, for the impossible-travel rule.
AREA_CENTRE = {"ZHONGYUAN": (34.7480, 113.6130), "ERQI": (34.7300, 113.6400),
               "GUANCHENG": (34.7460, 113.6780), "JINSHUI": (34.7750, 113.6600),
               "SHANGJIE": (34.8020, 113.3080), "HUIJI": (34.8670, 113.6170),
               "ECONOMIC_DEVELOPMENT_ZONE": (34.7230, 113.7350),
               "HIGH_TECH_ZONE": (34.8070, 113.5550),
               "ZHENGDONG_NEW_DISTRICT": (34.7700, 113.7400),
               "AIRPORT_ECONOMY_ZONE": (34.5270, 113.8550)}
# (category, count, name pattern, POS terminals each)
CONTRACTED = [("BOOKSTORE", 70, "书店", 2), ("CINEMA", 20, "影城", 3),
              ("PERFORMANCE_VENUE", 10, "剧场", 2), ("ORGANIZER", 5, "演艺公司", 0)]


def main(out_dir):
    merchants, devices = [], []
    next_merchant = 1001
    pos_id, reader_id, kiosk_id = 310_100_000_001, 310_400_000_001, 310_200_000_001

    def add_merchant(name, category, area):
        nonlocal next_merchant
        lat, lon = AREA_CENTRE[area]
        # A fixed spread from the id: up to ±0.018° (about 2 km) each way.
        dlat = ((next_merchant * 7919) % 37 - 18) / 1000
        dlon = ((next_merchant * 104729) % 37 - 18) / 1000
        merchants.append([next_merchant, name, category, area, 1,
                          f"{lat + dlat:.6f}", f"{lon + dlon:.6f}"])
        next_merchant += 1
        return next_merchant - 1

    for category, count, word, pos_each in CONTRACTED:
        for i in range(count):
            area = AREAS[i % len(AREAS)]
            mid = add_merchant(f"{AREA_ZH[area]}{word}{i // len(AREAS) + 1:02d}", category, area)
            for _ in range(pos_each):
                devices.append([pos_id, "POS", mid, "", 1])
                pos_id += 1
    for name, area in PUBLIC_VENUES:
        mid = add_merchant(name, "PUBLIC_VENUE", area)
        devices.append([reader_id, "SIGNIN_READER", mid, "", 1])
        reader_id += 1
    for i, area in enumerate(AREAS):
        mid = add_merchant(f"绿城通{AREA_ZH[area]}服务网点", "SERVICE_OUTLET", area)
        for _ in range(3):
            devices.append([kiosk_id, "KIOSK", mid, "", 1])
            kiosk_id += 1
    devices.append([310_300_000_001, "OTA_ENDPOINT", "", "CHINA_MOBILE", 1])
    devices.append([310_300_000_002, "OTA_ENDPOINT", "", "CHINA_TELECOM", 1])

    with open(os.path.join(out_dir, "merchants.csv"), "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["merchant_id", "name", "category", "district", "active", "latitude",
                    "longitude"])
        w.writerows(merchants)
    with open(os.path.join(out_dir, "devices.csv"), "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["device_id", "kind", "merchant_id", "operator", "active"])
        w.writerows(devices)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else os.path.dirname(os.path.abspath(__file__)))
