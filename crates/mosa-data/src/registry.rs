//! The task registries: the 19 VTAB-1k tasks (with the folder-name aliases used by the PEFT
//! code bases), the embedded mini-VTAB tasks, and the five FGVC datasets.

use crate::error::{DataError, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
pub enum Group {
    Natural,
    Specialized,
    Structured,
}

impl Group {
    pub const ALL: [Group; 3] = [Group::Natural, Group::Specialized, Group::Structured];
    pub fn name(self) -> &'static str {
        match self {
            Group::Natural => "Natural",
            Group::Specialized => "Specialized",
            Group::Structured => "Structured",
        }
    }
}

/// One VTAB-style task.
#[derive(Debug, Clone, Copy)]
pub struct TaskInfo {
    /// Canonical folder name.
    pub name: &'static str,
    /// Other folder names for the same task in common code bases.
    pub aliases: &'static [&'static str],
    pub group: Group,
    pub num_classes: usize,
    /// Number of test images of the standard split (None: not fixed, e.g. mini-VTAB reads its MANIFEST).
    pub test_images: Option<usize>,
}

const fn t(name: &'static str, aliases: &'static [&'static str], group: Group, num_classes: usize, test: usize) -> TaskInfo {
    TaskInfo { name, aliases, group, num_classes, test_images: Some(test) }
}

use Group::*;

/// VTAB-1k, in the order of the published tables.
pub const VTAB_TASKS: [TaskInfo; 19] = [
    t("cifar", &["cifar100", "cifar_100"], Natural, 100, 10_000),
    t("caltech101", &["caltech"], Natural, 102, 6_084),
    t("dtd", &[], Natural, 47, 1_880),
    t("oxford_flowers102", &["flowers102", "oxford_flowers"], Natural, 102, 6_149),
    t("oxford_iiit_pet", &["pets", "oxford_pet"], Natural, 37, 3_669),
    t("svhn", &["svhn_cropped"], Natural, 10, 26_032),
    t("sun397", &["sun"], Natural, 397, 21_750),
    t("patch_camelyon", &["camelyon", "pcam"], Specialized, 2, 32_768),
    t("eurosat", &[], Specialized, 10, 5_400),
    t("resisc45", &["resisc"], Specialized, 45, 6_300),
    t("diabetic_retinopathy", &["diabetic_retinopathy_detection", "retinopathy"], Specialized, 5, 42_670),
    t("clevr_count", &["clevr_count_all"], Structured, 8, 15_000),
    t("clevr_dist", &["clevr_closest_object_distance", "clevr_distance"], Structured, 6, 15_000),
    t("dmlab", &[], Structured, 6, 22_735),
    t("kitti", &["kitti_dist", "kitti_closest_vehicle_distance"], Structured, 4, 711),
    t("dsprites_loc", &["dsprites_location", "dsprites_label_x_position"], Structured, 16, 73_728),
    t("dsprites_ori", &["dsprites_orientation", "dsprites_label_orientation"], Structured, 16, 73_728),
    t("smallnorb_azi", &["smallnorb_azimuth", "smallnorb_label_azimuth"], Structured, 18, 12_150),
    t("smallnorb_ele", &["smallnorb_elevation", "smallnorb_label_elevation"], Structured, 9, 12_150),
];

const fn m(name: &'static str, group: Group, num_classes: usize) -> TaskInfo {
    TaskInfo { name, aliases: &[], group, num_classes, test_images: None }
}

/// The embedded mini-VTAB (`datasets/mini-vtab`), built by `cargo xtask prepare-mini-vtab`.
pub const MINI_VTAB_TASKS: [TaskInfo; 7] = [
    m("emoji_category", Natural, 9),
    m("fashion_mnist", Natural, 10),
    m("mnist", Specialized, 10),
    m("digits8x8", Specialized, 10),
    m("animal_silhouettes", Specialized, 10),
    m("shapes_count", Structured, 6),
    m("shapes_position", Structured, 8),
];

/// Looks a task up by canonical name or alias, in VTAB-1k then mini-VTAB.
pub fn lookup_task(name: &str) -> Result<&'static TaskInfo> {
    let key = name.trim_end_matches('/').to_ascii_lowercase();
    VTAB_TASKS.iter().chain(MINI_VTAB_TASKS.iter()).find(|t| t.name == key || t.aliases.contains(&key.as_str())).ok_or_else(|| DataError::UnknownTask {
        name: name.to_string(),
        known: VTAB_TASKS.iter().chain(MINI_VTAB_TASKS.iter()).map(|t| t.name).collect::<Vec<_>>().join(", "),
    })
}

/// One FGVC dataset in the VPT JSON layout.
#[derive(Debug, Clone, Copy)]
pub struct FgvcInfo {
    pub name: &'static str,
    pub aliases: &'static [&'static str],
    pub num_classes: usize,
    /// Prepended to each JSON key to get the image path inside the dataset folder.
    pub prefix: &'static str,
    /// train / val / test sizes of the VPT splits.
    pub sizes: [usize; 3],
}

pub const FGVC_DATASETS: [FgvcInfo; 5] = [
    FgvcInfo { name: "CUB_200_2011", aliases: &["cub", "cub200", "cub-200-2011"], num_classes: 200, prefix: "images/", sizes: [5_394, 600, 5_794] },
    FgvcInfo { name: "nabirds", aliases: &["nabird"], num_classes: 555, prefix: "images/", sizes: [21_536, 2_393, 24_633] },
    FgvcInfo { name: "OxfordFlower", aliases: &["flowers", "oxford_flowers", "oxfordflowers"], num_classes: 102, prefix: "", sizes: [1_020, 1_020, 6_149] },
    FgvcInfo { name: "Stanford-dogs", aliases: &["dogs", "stanford_dogs", "stanforddogs"], num_classes: 120, prefix: "Images/", sizes: [10_800, 1_200, 8_580] },
    FgvcInfo { name: "Stanford-cars", aliases: &["cars", "stanford_cars", "stanfordcars"], num_classes: 196, prefix: "", sizes: [7_329, 815, 8_041] },
];

/// Looks an FGVC dataset up by folder name or alias (case-insensitive). Unknown names are allowed
/// by the loader (generic JSON splits without a prefix); this only finds the known settings.
pub fn lookup_fgvc(name: &str) -> Option<&'static FgvcInfo> {
    let key = name.trim_end_matches('/').to_ascii_lowercase();
    FGVC_DATASETS.iter().find(|d| d.name.to_ascii_lowercase() == key || d.aliases.contains(&key.as_str()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aliases_resolve_and_names_are_unique() {
        assert_eq!(lookup_task("clevr_count_all").unwrap().name, "clevr_count");
        assert_eq!(lookup_task("dsprites_location").unwrap().name, "dsprites_loc");
        assert_eq!(lookup_task("mnist").unwrap().group, Group::Specialized);
        assert!(matches!(lookup_task("imagenet"), Err(DataError::UnknownTask { .. })));
        let mut names: Vec<&str> =
            VTAB_TASKS.iter().chain(MINI_VTAB_TASKS.iter()).flat_map(|t| std::iter::once(t.name).chain(t.aliases.iter().copied())).collect();
        let n = names.len();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), n, "a name or alias is used twice");
        let per_group = |g| VTAB_TASKS.iter().filter(|t| t.group == g).count();
        assert_eq!((per_group(Natural), per_group(Specialized), per_group(Structured)), (7, 4, 8));
        assert_eq!(lookup_fgvc("cub").unwrap().num_classes, 200);
        assert_eq!(lookup_fgvc("Stanford-cars").unwrap().prefix, "");
    }
}
