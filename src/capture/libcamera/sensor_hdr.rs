//! The Camera Module 3's own HDR mode (`[capture] hdr = "sensor"`).
//!
//! The imx708 sensor merges exposures itself when its V4L2 control
//! `wide_dynamic_range` is on, which changes the modes it offers, so it must
//! be switched before libcamera enumerates the camera, through the sensor's
//! sub-device, as rpicam-apps does. Like rpicam-apps, camnode switches it off
//! again on every start that does not ask for it, so that a mode left on by an
//! earlier run does not linger. The sub-device is found through sysfs: the one
//! whose driver is imx708 and whose device-tree node is the camera's id.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// V4L2_CID_WIDE_DYNAMIC_RANGE (linux/v4l2-controls.h: camera class + 21).
const WIDE_DYNAMIC_RANGE: u32 = 0x009a_0900 + 21;

/// struct v4l2_control.
#[repr(C)]
struct V4l2Control {
    id: u32,
    value: i32,
}

/// _IOWR('V', 27 / 28, struct v4l2_control).
const VIDIOC_G_CTRL: libc::c_ulong = 0xc008_561b;
const VIDIOC_S_CTRL: libc::c_ulong = 0xc008_561c;

/// Switches the sensor HDR of the imx708 behind `camera_id` on or off.
/// Returns whether it changed, in which case libcamera must enumerate the
/// camera again to see its new modes.
pub(super) fn switch(camera_id: &str, on: bool) -> Result<bool> {
    let mut changed = false;
    for node in subdevices(Path::new("/sys/class/video4linux"), camera_id) {
        let dev = Path::new("/dev").join(node.file_name().unwrap_or_default());
        let file = File::open(&dev).with_context(|| {
            format!("cannot open {} to switch the sensor's HDR: add the user to the group video", dev.display())
        })?;
        let mut control = V4l2Control { id: WIDE_DYNAMIC_RANGE, value: 0 };
        // SAFETY: VIDIOC_G_CTRL and VIDIOC_S_CTRL read and write one
        // struct v4l2_control, which `control` is, on an open V4L2 node.
        if unsafe { libc::ioctl(file.as_raw_fd(), VIDIOC_G_CTRL, &mut control) } != 0 {
            return Err(std::io::Error::last_os_error()).with_context(|| format!("{} has no HDR control", dev.display()));
        }
        if (control.value != 0) != on {
            control.value = on.into();
            // SAFETY: as above.
            if unsafe { libc::ioctl(file.as_raw_fd(), VIDIOC_S_CTRL, &mut control) } != 0 {
                return Err(std::io::Error::last_os_error())
                    .with_context(|| format!("cannot switch the sensor's HDR {} on {}", if on { "on" } else { "off" }, dev.display()));
            }
            changed = true;
        }
    }
    Ok(changed)
}

/// The sysfs entries (`v4l-subdevN`) of the imx708 sensors that belong to
/// `camera_id`, under `root` (`/sys/class/video4linux`).
fn subdevices(root: &Path, camera_id: &str) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(root) else { return Vec::new() };
    let mut found: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("v4l-subdev")))
        .filter(|p| {
            let link = |rel: &str| std::fs::read_link(p.join(rel)).map(|t| t.to_string_lossy().into_owned()).unwrap_or_default();
            link("device/driver/module").contains("imx708") && link("device/of_node").contains(camera_id)
        })
        .collect();
    found.sort();
    found
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn finds_the_imx708_subdevice_of_the_camera() {
        let sys = tempfile::tempdir().unwrap();
        let camera = "/base/axi/pcie@120000/rp1/i2c@88000/imx708@1a";
        for (n, module, node) in [
            (0, "../../module/rp1_cfe", "/base/axi/pcie@120000/rp1/csi@110000"),
            (1, "../../../../module/imx708", camera),
            (2, "../../../../module/imx708", "/base/axi/pcie@120000/rp1/i2c@80000/imx708@1a"),
            (3, "../../../../module/dw9807_vcm", "/base/axi/pcie@120000/rp1/i2c@88000/dw9807@c"),
        ] {
            let device = sys.path().join(format!("v4l-subdev{n}/device"));
            std::fs::create_dir_all(device.join("driver")).unwrap();
            symlink(module, device.join("driver/module")).unwrap();
            symlink(format!("../../../firmware/devicetree{node}"), device.join("of_node")).unwrap();
        }
        assert_eq!(subdevices(sys.path(), camera), [sys.path().join("v4l-subdev1")]);
        assert!(subdevices(sys.path(), "/base/soc/i2c0mux/i2c@1/ov5647@36").is_empty());
        assert!(subdevices(&sys.path().join("missing"), camera).is_empty());
    }
}
