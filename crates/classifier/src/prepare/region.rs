//! What the decoder paths hand to the tensor stage: the decoded pixels around the region the
//! model needs, the crop box in them, and the share of the decode budget they hold; and the
//! taking of that share, which every decoder path does before it allocates.

use super::crop::{plan, Geometry};
use crate::budget::{BudgetPermit, MemoryBudget};
use crate::cancel::Cancel;
use crate::imageio::ImageCheckError;
use crate::ClassifyError;
use image::metadata::Orientation;

/// Decoded pixels (1, 3 or 4 bytes each, RGB order) and where the crop sits in them.
pub(super) struct Region<'b> {
    pub(super) pixels: Vec<u8>,
    pub(super) width: u32,
    pub(super) height: u32,
    pub(super) channels: usize,
    /// The crop box (left, top, width, height) in this buffer's pixels, before orientation.
    pub(super) crop: (f64, f64, f64, f64),
    /// What the crop box is resized to (width, height), before orientation.
    pub(super) dst: (u32, u32),
    /// The EXIF orientation, applied while the tensor is written.
    pub(super) orientation: Orientation,
    /// The budget's share for these pixels while it is still held; given back when dropped.
    pub(super) _permit: Option<BudgetPermit<'b>>,
}

impl<'b> Region<'b> {
    /// A whole decoded image: the crop box is the geometry's crop of all its pixels.
    pub(super) fn whole(
        pixels: Vec<u8>,
        width: u32,
        height: u32,
        channels: usize,
        orientation: Orientation,
        permit: Option<BudgetPermit<'b>>,
        geometry: &Geometry,
    ) -> Region<'b> {
        let plan = plan(width, height, orientation, geometry);
        Region {
            pixels,
            width,
            height,
            channels,
            crop: plan.crop,
            dst: plan.dst,
            orientation,
            _permit: permit,
        }
    }
}

/// Takes `need` bytes from the budget for a `w`×`h` image (waiting while it is spent); an image
/// needing more than the whole budget is refused as too large.
pub(super) fn take_budget<'b>(
    budget: &'b MemoryBudget,
    need: u64,
    w: u32,
    h: u32,
    cancel: &Cancel,
) -> Result<BudgetPermit<'b>, ClassifyError> {
    if need > budget.capacity() {
        return Err(ClassifyError::Image(ImageCheckError::TooMuchMemory {
            width: w,
            height: h,
            needed: need,
            limit: budget.capacity(),
        }));
    }
    Ok(budget.acquire(need, cancel)?)
}
