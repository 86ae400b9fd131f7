//! The registry: merchants (category, district) and devices (kind, merchant, status).
//!
//! Imported from CSV files in `config/registry/` into the store, and held in memory by the
//! gateway for HELLO checks and TXN validation.

use serde::Deserialize;
use std::collections::HashMap;
use std::path::Path;
use wenxiao_protocol::{DeviceId, DeviceKind};

/// A merchant's number in the registry.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize, serde::Serialize,
)]
#[serde(transparent)]
pub struct MerchantId(pub i64);

macro_rules! coded_enum {
    ($(#[$m:meta])* $name:ident { $($(#[$vm:meta])* $v:ident = $code:literal),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize)]
        #[serde(rename_all = "SCREAMING_SNAKE_CASE")]
        pub enum $name { $($(#[$vm])* $v = $code),+ }

        impl $name {
            /// Every value.
            pub const ALL: &'static [$name] = &[$($name::$v),+];
            /// The code stored in the database.
            pub const fn code(self) -> i16 { self as i16 }
            /// The value with this database code.
            pub const fn from_code(code: i16) -> Option<Self> {
                match code { $($code => Some(Self::$v),)+ _ => None }
            }
        }
    };
}

coded_enum!(
    /// What kind of merchant (policy: "Subsidy on purchases", "Points").
    Category {
        /// Bookstore: 10 % of the amount paid for books.
        Bookstore = 1,
        /// Cinema: 10 % of the agreed price of domestic films.
        Cinema = 2,
        /// Performance venue: 30 % of the regular ticket price.
        PerformanceVenue = 3,
        /// Performance organizer: fixed awards per show, not card purchases.
        Organizer = 4,
        /// Free public venue: sign-ins earn points.
        PublicVenue = 5,
        /// Card-company service outlet hosting top-up kiosks.
        ServiceOutlet = 6,
    }
);

coded_enum!(
    /// The ten areas of the pilot: six districts and four development zones.
    District {
        /// 中原区
        Zhongyuan = 1,
        /// 二七区
        Erqi = 2,
        /// 管城回族区
        Guancheng = 3,
        /// 金水区
        Jinshui = 4,
        /// 上街区
        Shangjie = 5,
        /// 惠济区
        Huiji = 6,
        /// 经济开发区
        EconomicDevelopmentZone = 7,
        /// 高新区
        HighTechZone = 8,
        /// 郑东新区
        ZhengdongNewDistrict = 9,
        /// 航空港区
        AirportEconomyZone = 10,
    }
);

impl Category {
    /// The name users read: Chinese, then English.
    pub const fn label(self) -> &'static str {
        match self {
            Self::Bookstore => "书店 / bookstore",
            Self::Cinema => "电影院 / cinema",
            Self::PerformanceVenue => "演出场所 / performance venue",
            Self::Organizer => "演出主办方 / performance organizer",
            Self::PublicVenue => "公共文化场馆 / public venue",
            Self::ServiceOutlet => "服务网点 / service outlet",
        }
    }
}

impl District {
    /// The name users read: Chinese, then English.
    pub const fn label(self) -> &'static str {
        match self {
            Self::Zhongyuan => "中原区 / Zhongyuan",
            Self::Erqi => "二七区 / Erqi",
            Self::Guancheng => "管城回族区 / Guancheng",
            Self::Jinshui => "金水区 / Jinshui",
            Self::Shangjie => "上街区 / Shangjie",
            Self::Huiji => "惠济区 / Huiji",
            Self::EconomicDevelopmentZone => "经济开发区 / Economic Development Zone",
            Self::HighTechZone => "高新区 / High-Tech Zone",
            Self::ZhengdongNewDistrict => "郑东新区 / Zhengdong New District",
            Self::AirportEconomyZone => "航空港区 / Airport Economy Zone",
        }
    }
}

coded_enum!(
    /// A mobile operator whose OTA endpoint loads credits onto its SIM cards.
    Operator {
        /// China Mobile (~7 M users in the city).
        ChinaMobile = 1,
        /// China Telecom (~2 M users).
        ChinaTelecom = 2,
    }
);

/// A contracted merchant, public venue or service outlet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Merchant {
    /// Its number.
    pub merchant_id: MerchantId,
    /// Its name.
    pub name: String,
    /// Its category.
    pub category: Category,
    /// Its area.
    pub district: District,
    /// False when suspended.
    pub active: bool,
    /// Where it is: latitude and longitude in micro-degrees (the impossible-travel rule).
    pub place: Option<(i32, i32)>,
}

/// A registered device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Device {
    /// Its id (certificate CN).
    pub device_id: DeviceId,
    /// Its kind.
    pub kind: DeviceKind,
    /// The merchant it stands at (none for OTA endpoints).
    pub merchant_id: Option<MerchantId>,
    /// The operator of an OTA endpoint.
    pub operator: Option<Operator>,
    /// False when disabled.
    pub active: bool,
}

/// The registry as loaded from a store or files.
#[derive(Debug, Clone, Default)]
pub struct Registry {
    merchants: HashMap<MerchantId, Merchant>,
    devices: HashMap<DeviceId, Device>,
}

/// A registry that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// A file could not be read or parsed.
    #[error("{path}: {message}")]
    File {
        /// The file.
        path: String,
        /// What is wrong, with the line.
        message: String,
    },
    /// The rows contradict each other.
    #[error("{0}")]
    Inconsistent(String),
}

#[derive(Deserialize)]
struct MerchantRow {
    merchant_id: MerchantId,
    name: String,
    category: Category,
    district: District,
    active: u8,
    #[serde(default)]
    latitude: Option<rust_decimal::Decimal>,
    #[serde(default)]
    longitude: Option<rust_decimal::Decimal>,
}

/// Degrees as micro-degrees, if within `limit` degrees of 0.
fn micro_degrees(d: rust_decimal::Decimal, limit: i64) -> Option<i32> {
    use rust_decimal::prelude::ToPrimitive;
    if d.abs() > rust_decimal::Decimal::from(limit) {
        return None;
    }
    (d * rust_decimal::Decimal::from(1_000_000))
        .round()
        .to_i32()
}

#[derive(Deserialize)]
struct DeviceRow {
    device_id: u64,
    kind: String,
    merchant_id: Option<MerchantId>,
    operator: Option<Operator>,
    active: u8,
}

fn read_csv<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<Vec<T>, RegistryError> {
    let file_err = |message: String| RegistryError::File {
        path: path.display().to_string(),
        message,
    };
    let mut reader = csv::Reader::from_path(path).map_err(|e| file_err(e.to_string()))?;
    reader
        .deserialize()
        .map(|row| row.map_err(|e| file_err(e.to_string())))
        .collect()
}

impl Registry {
    /// Builds a registry, checking that every device's merchant exists, that OTA
    /// endpoints name an operator and other devices a merchant.
    pub fn new(merchants: Vec<Merchant>, devices: Vec<Device>) -> Result<Self, RegistryError> {
        let mut r = Registry::default();
        for m in merchants {
            let id = m.merchant_id;
            if r.merchants.insert(id, m).is_some() {
                return Err(RegistryError::Inconsistent(format!(
                    "merchant {} twice",
                    id.0
                )));
            }
        }
        for d in devices {
            let id = d.device_id;
            match (d.kind, d.merchant_id, d.operator) {
                (DeviceKind::OtaEndpoint, None, Some(_)) => {}
                (DeviceKind::OtaEndpoint, _, _) => {
                    return Err(RegistryError::Inconsistent(format!(
                        "OTA endpoint {id} needs an operator and no merchant"
                    )));
                }
                (_, Some(m), None) if r.merchants.contains_key(&m) => {}
                _ => {
                    return Err(RegistryError::Inconsistent(format!(
                        "device {id} needs an existing merchant and no operator"
                    )));
                }
            }
            if r.devices.insert(id, d).is_some() {
                return Err(RegistryError::Inconsistent(format!("device {id} twice")));
            }
        }
        Ok(r)
    }

    /// Reads `merchants.csv` and `devices.csv` (formats in `config/registry/`).
    pub fn from_csv(merchants_path: &Path, devices_path: &Path) -> Result<Self, RegistryError> {
        let merchants = read_csv::<MerchantRow>(merchants_path)?
            .into_iter()
            .map(|r| {
                let place = match (r.latitude, r.longitude) {
                    (None, None) => None,
                    (Some(lat), Some(lon)) => Some(
                        micro_degrees(lat, 90)
                            .zip(micro_degrees(lon, 180))
                            .ok_or_else(|| RegistryError::File {
                                path: merchants_path.display().to_string(),
                                message: format!(
                                    "merchant {}: latitude {lat}, longitude {lon} is no place",
                                    r.merchant_id.0
                                ),
                            })?,
                    ),
                    _ => {
                        return Err(RegistryError::File {
                            path: merchants_path.display().to_string(),
                            message: format!(
                                "merchant {}: latitude and longitude come together",
                                r.merchant_id.0
                            ),
                        });
                    }
                };
                Ok(Merchant {
                    merchant_id: r.merchant_id,
                    name: r.name,
                    category: r.category,
                    district: r.district,
                    active: r.active != 0,
                    place,
                })
            })
            .collect::<Result<Vec<_>, RegistryError>>()?;
        let devices = read_csv::<DeviceRow>(devices_path)?
            .into_iter()
            .map(|r| {
                let kind = DeviceKind::ALL
                    .iter()
                    .copied()
                    .find(|k| k.name() == r.kind)
                    .ok_or_else(|| RegistryError::File {
                        path: devices_path.display().to_string(),
                        message: format!("device {}: unknown kind {:?}", r.device_id, r.kind),
                    })?;
                Ok(Device {
                    device_id: DeviceId(r.device_id),
                    kind,
                    merchant_id: r.merchant_id,
                    operator: r.operator,
                    active: r.active != 0,
                })
            })
            .collect::<Result<Vec<_>, RegistryError>>()?;
        Self::new(merchants, devices)
    }

    /// A device by id.
    pub fn device(&self, id: DeviceId) -> Option<&Device> {
        self.devices.get(&id)
    }

    /// A merchant by id.
    pub fn merchant(&self, id: MerchantId) -> Option<&Merchant> {
        self.merchants.get(&id)
    }

    /// Every merchant, in id order.
    pub fn merchants(&self) -> Vec<&Merchant> {
        let mut v: Vec<_> = self.merchants.values().collect();
        v.sort_by_key(|m| m.merchant_id);
        v
    }

    /// Every device, in id order.
    pub fn devices(&self) -> Vec<&Device> {
        let mut v: Vec<_> = self.devices.values().collect();
        v.sort_by_key(|d| d.device_id);
        v
    }

    /// True when nothing is registered.
    pub fn is_empty(&self) -> bool {
        self.devices.is_empty() && self.merchants.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_registry_has_the_pilots_counts() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/registry");
        let r = Registry::from_csv(&dir.join("merchants.csv"), &dir.join("devices.csv")).unwrap();
        let count = |c: Category| r.merchants().iter().filter(|m| m.category == c).count();
        assert_eq!(count(Category::Bookstore), 70);
        assert_eq!(count(Category::Cinema), 20);
        assert_eq!(count(Category::PerformanceVenue), 10);
        assert_eq!(count(Category::Organizer), 5);
        assert_eq!(count(Category::PublicVenue), 18);
        let districts: std::collections::HashSet<_> =
            r.merchants().iter().map(|m| m.district).collect();
        assert_eq!(districts.len(), District::ALL.len());
        let ota: Vec<_> = r
            .devices()
            .into_iter()
            .filter(|d| d.kind == DeviceKind::OtaEndpoint)
            .filter_map(|d| d.operator)
            .collect();
        assert_eq!(ota, vec![Operator::ChinaMobile, Operator::ChinaTelecom]);
    }

    #[test]
    fn a_device_at_an_unknown_merchant_is_refused() {
        let d = Device {
            device_id: DeviceId(1),
            kind: DeviceKind::Pos,
            merchant_id: Some(MerchantId(9)),
            operator: None,
            active: true,
        };
        assert!(Registry::new(vec![], vec![d]).is_err());
    }
}
