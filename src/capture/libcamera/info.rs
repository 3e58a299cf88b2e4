//! What a libcamera camera offers, in camnode's terms: its controls as a
//! [`CameraInfo`] for [`controls`](crate::capture::controls) to plan with,
//! camnode's values as libcamera `ControlList`s, and `camnode cameras`.
//!
//! Control names and types come from the camera's own id map (libcamera's
//! table of every control it knows, draft and vendor ones included), through
//! the `libcamera` crate's public API; enumerator names from the crate's
//! generated control ids, which cover the core controls.

use std::collections::HashMap;
use std::fmt::Write;

use anyhow::{anyhow, Context, Result};
use libcamera::camera::Camera;
use libcamera::control::{ControlInfoMap, ControlList};
use libcamera::control_value::{ControlType, ControlValue};
use libcamera::controls::ControlId;
use libcamera::geometry::Rectangle;
use libcamera::pixel_format::PixelFormat;
use libcamera::properties;
use libcamera::stream::StreamRole;
use libcamera::utils::UniquePtr;
use serde::Serialize;

use super::{choose_format, sizes, start_manager};
use crate::capture::controls::{key_of, CameraInfo, Choice, ControlInfo, Rect, Value};

/// Every control libcamera knows for this camera: id to name and type.
pub(super) struct ControlNames(HashMap<u32, (String, ControlType)>);

impl ControlNames {
    pub(super) fn of(map: &ControlInfoMap) -> ControlNames {
        let list = ControlList::from_info_map(map);
        let ids = list.as_ref().and_then(|l| l.id_map()).and_then(|m| m.iter());
        ControlNames(ids.into_iter().flatten().map(|(id, control)| (id, (control.name().to_string(), control.ty()))).collect())
    }

    fn name(&self, id: u32) -> String {
        self.0.get(&id).map_or_else(|| format!("control {id:#x}"), |(name, _)| name.clone())
    }

    fn id(&self, name: &str) -> Option<(u32, &ControlType)> {
        self.0.iter().find(|(_, (n, _))| n == name).map(|(id, (_, ty))| (*id, ty))
    }
}

/// The camera's model and controls, with their ranges at the configured size.
pub(super) fn describe(camera: &Camera<'_>) -> CameraInfo {
    let map = camera.controls();
    let names = ControlNames::of(map);
    let mut controls: Vec<ControlInfo> = map
        .into_iter()
        .map(|(id, info)| {
            let enumerators = ControlId::from_id(id).map(|c| c.enumerators_map()).unwrap_or_default();
            let values = info
                .values()
                .into_iter()
                .map(|v| {
                    let value = value_of(&v);
                    let name = match value {
                        Value::Int(n) => enumerators.get(&(n as i32)).cloned().unwrap_or_default(),
                        _ => String::new(),
                    };
                    Choice { value, name }
                })
                .collect();
            ControlInfo {
                name: names.name(id),
                id,
                min: value_of(&info.min()),
                max: value_of(&info.max()),
                default: value_of(&info.def()),
                values,
            }
        })
        .collect();
    controls.sort_by(|a, b| a.name.cmp(&b.name));
    CameraInfo { id: camera.id().to_string(), model: model(camera), controls }
}

pub(super) fn model(camera: &Camera<'_>) -> String {
    camera.properties().get::<properties::Model>().map(|m| m.0).unwrap_or_else(|_| "unknown model".into())
}

/// A libcamera value as camnode's.
fn value_of(value: &ControlValue) -> Value {
    fn one<T: Copy, F: Fn(T) -> Value, G: Fn(Vec<T>) -> Value>(v: &[T], single: F, many: G) -> Value {
        match v {
            [] => Value::None,
            [x] => single(*x),
            _ => many(v.to_vec()),
        }
    }
    let ints = |v: Vec<i64>| Value::Ints(v);
    match value {
        ControlValue::None => Value::None,
        ControlValue::Bool(v) => one(v, Value::Bool, |v| Value::Other(format!("{v:?}"))),
        ControlValue::Byte(v) => one(v, |x| Value::Int(x.into()), |v| ints(v.into_iter().map(i64::from).collect())),
        ControlValue::Uint16(v) => one(v, |x| Value::Int(x.into()), |v| ints(v.into_iter().map(i64::from).collect())),
        ControlValue::Uint32(v) => one(v, |x| Value::Int(x.into()), |v| ints(v.into_iter().map(i64::from).collect())),
        ControlValue::Int32(v) => one(v, |x| Value::Int(x.into()), |v| ints(v.into_iter().map(i64::from).collect())),
        ControlValue::Int64(v) => one(v, Value::Int, ints),
        ControlValue::Float(v) => one(v, Value::Float, Value::Floats),
        ControlValue::Rectangle(v) => one(
            v,
            |r| Value::Rect(Rect { x: r.x, y: r.y, width: r.width, height: r.height }),
            |v| Value::Other(format!("{} rectangles", v.len())),
        ),
        ControlValue::Size(v) => Value::Other(v.iter().map(|s| format!("{}x{}", s.width, s.height)).collect::<Vec<_>>().join(", ")),
        ControlValue::Point(v) => Value::Other(v.iter().map(|p| format!("({}, {})", p.x, p.y)).collect::<Vec<_>>().join(", ")),
        ControlValue::String(v) => Value::Other(v.join(", ")),
    }
}

/// camnode's value as libcamera's, of the type libcamera declares for the
/// control.
fn control_value(value: &Value, ty: &ControlType) -> Option<ControlValue> {
    Some(match (value, ty) {
        (Value::Bool(b), ControlType::Bool) => (*b).into(),
        (Value::Int(v), ControlType::Int32) => i32::try_from(*v).ok()?.into(),
        (Value::Int(v), ControlType::Int64) => (*v).into(),
        (Value::Float(v), ControlType::Float) => (*v).into(),
        (Value::Floats(v), ControlType::Float) => v.clone().into(),
        (Value::Ints(v), ControlType::Int64) => v.clone().into(),
        (Value::Ints(v), ControlType::Int32) => v.iter().map(|&x| i32::try_from(x).ok()).collect::<Option<Vec<i32>>>()?.into(),
        (Value::Rect(r), ControlType::Rectangle) => Rectangle { x: r.x, y: r.y, width: r.width, height: r.height }.into(),
        _ => return None,
    })
}

/// A control list setting each of `changes` on `camera`. It is made on
/// libcamera's map of control ids, as rpicam-apps makes its lists: a list
/// without one cannot be passed to an IPA module that runs in a process of
/// its own.
pub(super) fn control_list(camera: &Camera<'_>, changes: &[(&str, Value)]) -> Result<UniquePtr<ControlList>> {
    let names = ControlNames::of(camera.controls());
    let on_camera = ControlList::from_info_map(camera.controls()).context("libcamera could not make a control list")?;
    let ids = on_camera.id_map().context("the camera's controls have no id map")?;
    let mut list = ControlList::from_id_map(ids).context("libcamera could not make a control list")?;
    for (name, value) in changes {
        let (id, ty) = names.id(name).ok_or_else(|| anyhow!("libcamera does not know the control {name}"))?;
        let converted = control_value(value, ty).ok_or_else(|| anyhow!("camnode cannot set {name} ({ty:?}) to {value}"))?;
        list.set_raw(id, converted).with_context(|| format!("cannot set {name} to {value}"))?;
    }
    Ok(list)
}

/// "Brightness = 0.2, ExposureTime = 20000": what a list holds, for the log.
pub(super) fn show(list: &ControlList, names: &ControlNames) -> String {
    let mut shown: Vec<String> = list.into_iter().map(|(id, value)| format!("{} = {}", names.name(id), value_of(&value))).collect();
    shown.sort();
    shown.join(", ")
}

/// One camera as `camnode cameras` shows it.
#[derive(Serialize)]
struct Listing {
    id: String,
    model: String,
    formats: Vec<FormatListing>,
    default_size: Option<String>,
    /// Lowest and highest, at the default size.
    frame_rates: Option<(f64, f64)>,
    controls: Vec<ControlListing>,
}

#[derive(Serialize)]
struct FormatListing {
    format: String,
    sizes: Vec<String>,
    camnode_uses: bool,
}

#[derive(Serialize)]
struct AllListings<'a> {
    libcamera: &'a str,
    cameras: &'a [Listing],
}

#[derive(Serialize)]
struct ControlListing {
    #[serde(flatten)]
    info: ControlInfo,
    /// The `[capture]` key that sets it.
    key: Option<&'static str>,
}

/// Lists every camera libcamera finds: its id (for `--source libcamera:ID`),
/// model, the formats and sizes of its video stream, and its controls with
/// their ranges and defaults, as text or as JSON for scripts.
pub fn list_cameras(json: bool) -> Result<String> {
    let manager = start_manager()?;
    let cameras = manager.cameras();
    let mut listings = Vec::new();
    for camera in cameras.iter() {
        let info = describe(&camera);
        let mut listing = Listing {
            id: info.id.clone(),
            model: info.model.clone(),
            formats: Vec::new(),
            default_size: None,
            frame_rates: info.rate_range(),
            controls: info.controls.into_iter().map(|info| ControlListing { key: key_of(&info.name), info }).collect(),
        };
        if let Some(config) = camera.generate_configuration(&[StreamRole::VideoRecording]) {
            if let Some(stream) = config.get(0) {
                let formats = stream.formats();
                let offered: Vec<PixelFormat> = formats.pixel_formats().into_iter().collect();
                let usable = choose_format(&offered).map(|(f, _)| f);
                listing.formats = offered
                    .into_iter()
                    .map(|f| FormatListing { format: f.to_string(), sizes: sizes(&formats, f), camnode_uses: Some(f) == usable })
                    .collect();
                let size = stream.get_size();
                listing.default_size = Some(format!("{}x{}", size.width, size.height));
            }
        }
        listings.push(listing);
    }
    let version = libcamera::version::runtime_version();
    if json {
        return Ok(serde_json::to_string_pretty(&AllListings { libcamera: version, cameras: &listings })? + "\n");
    }
    let mut out = String::new();
    writeln!(out, "libcamera {version}: {} camera(s)", listings.len())?;
    for camera in &listings {
        writeln!(out, "{}\n    model: {}", camera.id, camera.model)?;
        if camera.formats.is_empty() {
            writeln!(out, "    no video stream")?;
        }
        for f in &camera.formats {
            let mark = if f.camnode_uses { " (camnode uses this)" } else { "" };
            writeln!(out, "    {}{mark}: {}", f.format, f.sizes.join(", "))?;
        }
        if let Some(size) = &camera.default_size {
            writeln!(out, "    default size: {size}")?;
        }
        writeln!(out, "    controls ([capture] key, then range or values, and default):")?;
        let width = camera.controls.iter().map(|c| c.info.name.len()).max().unwrap_or(0);
        for c in &camera.controls {
            let key = c.key.map_or(String::new(), |k| format!("({k}) "));
            writeln!(out, "      {:width$}  {key}{}", c.info.name, c.info.describe())?;
        }
        if let Some((lowest, highest)) = camera.frame_rates {
            writeln!(out, "    frame rates: {lowest:.2} to {highest:.2} fps at the default size")?;
        }
    }
    if listings.is_empty() {
        writeln!(out, "no camera found; `camnode doctor` and `camnode run --source libcamera` explain what to check")?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capture::controls::{AfMode, AfRange, Awb, ExposureMode, Hdr, Metering};
    use libcamera::controls as lc;

    #[test]
    fn choices_set_the_enumerators_libcamera_defines() {
        assert_eq!(Awb::Daylight.value(), lc::AwbMode::AwbDaylight as i64);
        assert_eq!(Awb::Custom.value(), lc::AwbMode::AwbCustom as i64);
        assert_eq!(Awb::Cloudy.value(), lc::AwbMode::AwbCloudy as i64);
        assert_eq!(Awb::Indoor.value(), lc::AwbMode::AwbIndoor as i64);
        assert_eq!(Metering::Average.value(), lc::AeMeteringMode::MeteringMatrix as i64);
        assert_eq!(Metering::Spot.value(), lc::AeMeteringMode::MeteringSpot as i64);
        assert_eq!(ExposureMode::Sport.value(), lc::AeExposureMode::ExposureShort as i64);
        assert_eq!(ExposureMode::Long.value(), lc::AeExposureMode::ExposureLong as i64);
        assert_eq!(AfMode::Continuous.value(), lc::AfMode::Continuous as i64);
        assert_eq!(AfRange::Macro.value(), lc::AfRange::Macro as i64);
        assert_eq!(Hdr::SingleExp.value(), lc::HdrMode::SingleExposure as i64);
    }

    #[test]
    fn values_convert_to_the_declared_type_or_not_at_all() {
        assert!(matches!(control_value(&Value::Int(20000), &ControlType::Int32), Some(ControlValue::Int32(v)) if v[0] == 20000));
        assert!(matches!(control_value(&Value::Floats(vec![1.5, 1.2]), &ControlType::Float), Some(ControlValue::Float(v)) if v.len() == 2));
        assert!(control_value(&Value::Int(1 << 40), &ControlType::Int32).is_none());
        assert!(control_value(&Value::Float(1.0), &ControlType::Int32).is_none());
        let rect = Value::Rect(Rect { x: 8, y: 4, width: 320, height: 240 });
        assert_eq!(value_of(&control_value(&rect, &ControlType::Rectangle).unwrap()), rect);
    }
}
