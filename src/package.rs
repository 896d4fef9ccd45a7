//! `itsmc package`: the zip a Linux Function App runs, built by itsmc itself so that its layout always
//! matches the routes: `host.json`, every `function-*/function.json` (compiled in, so the binary and its
//! bindings cannot drift apart) and the `itsmc` executable with its executable bit kept, which the Functions
//! host needs to start a custom handler. Entries are deflated and dated 1980-01-01, so the same binary makes
//! the same zip.

use std::io::Write;
use std::path::Path;

use flate2::Compression;
use flate2::write::DeflateEncoder;

/// `host.json` and the function folders, as the repository has them.
pub const FILES: [(&str, &str); 9] = [
    ("host.json", include_str!("../host.json")),
    ("function-alert/function.json", include_str!("../function-alert/function.json")),
    ("function-connections/function.json", include_str!("../function-connections/function.json")),
    ("function-dashboard/function.json", include_str!("../function-dashboard/function.json")),
    ("function-deliveries/function.json", include_str!("../function-deliveries/function.json")),
    ("function-health/function.json", include_str!("../function-health/function.json")),
    ("function-servicedesk/function.json", include_str!("../function-servicedesk/function.json")),
    ("function-sync/function.json", include_str!("../function-sync/function.json")),
    ("function-workitems/function.json", include_str!("../function-workitems/function.json")),
];

/// What was written.
#[derive(Debug)]
pub struct Package {
    pub entries: usize,
    pub bytes: u64,
}

/// Writes the package to `out`, with `binary` as its `itsmc`.
pub fn write(out: &Path, binary: &Path) -> Result<Package, String> {
    let executable = std::fs::read(binary).map_err(|e| format!("cannot read the binary {}: {e}", binary.display()))?;
    let mut zip = Zip::default();
    for (name, text) in FILES {
        zip.add(name, text.as_bytes(), 0o100644);
    }
    zip.add("itsmc", &executable, 0o100755);
    let bytes = zip.finish();
    std::fs::write(out, &bytes).map_err(|e| format!("cannot write {}: {e}", out.display()))?;
    Ok(Package { entries: FILES.len() + 1, bytes: bytes.len() as u64 })
}

/// A zip archive in memory: local headers and data, then the central directory (APPNOTE 6.3, no zip64:
/// every entry and the whole stay under 4 GiB).
#[derive(Default)]
struct Zip {
    data: Vec<u8>,
    directory: Vec<u8>,
    entries: u16,
}

/// 1980-01-01 00:00:00 in MS-DOS form: time 0, date (0 << 9) | (1 << 5) | 1.
const DOS_TIME: u16 = 0;
const DOS_DATE: u16 = 0x21;

impl Zip {
    fn add(&mut self, name: &str, content: &[u8], mode: u32) {
        let mut crc = flate2::Crc::new();
        crc.update(content);
        let mut deflater = DeflateEncoder::new(Vec::new(), Compression::best());
        deflater.write_all(content).expect("writing to memory");
        let packed = deflater.finish().expect("writing to memory");
        let offset = self.data.len() as u32;
        let fields = |out: &mut Vec<u8>| {
            out.extend_from_slice(&20u16.to_le_bytes()); // version needed: 2.0 (deflate)
            out.extend_from_slice(&0u16.to_le_bytes()); // flags
            out.extend_from_slice(&8u16.to_le_bytes()); // method: deflate
            out.extend_from_slice(&DOS_TIME.to_le_bytes());
            out.extend_from_slice(&DOS_DATE.to_le_bytes());
            out.extend_from_slice(&crc.sum().to_le_bytes());
            out.extend_from_slice(&(packed.len() as u32).to_le_bytes());
            out.extend_from_slice(&(content.len() as u32).to_le_bytes());
            out.extend_from_slice(&(name.len() as u16).to_le_bytes());
            out.extend_from_slice(&0u16.to_le_bytes()); // extra field length
        };
        self.data.extend_from_slice(&0x0403_4b50u32.to_le_bytes());
        fields(&mut self.data);
        self.data.extend_from_slice(name.as_bytes());
        self.data.extend_from_slice(&packed);

        self.directory.extend_from_slice(&0x0201_4b50u32.to_le_bytes());
        self.directory.extend_from_slice(&(3u16 << 8 | 20).to_le_bytes()); // made by: Unix, 2.0
        fields(&mut self.directory);
        self.directory.extend_from_slice(&0u16.to_le_bytes()); // comment length
        self.directory.extend_from_slice(&0u16.to_le_bytes()); // disk number
        self.directory.extend_from_slice(&0u16.to_le_bytes()); // internal attributes
        self.directory.extend_from_slice(&(mode << 16).to_le_bytes()); // external: Unix mode
        self.directory.extend_from_slice(&offset.to_le_bytes());
        self.directory.extend_from_slice(name.as_bytes());
        self.entries += 1;
    }

    fn finish(mut self) -> Vec<u8> {
        let directory_offset = self.data.len() as u32;
        self.data.extend_from_slice(&self.directory);
        self.data.extend_from_slice(&0x0605_4b50u32.to_le_bytes());
        self.data.extend_from_slice(&0u16.to_le_bytes()); // this disk
        self.data.extend_from_slice(&0u16.to_le_bytes()); // disk with the directory
        self.data.extend_from_slice(&self.entries.to_le_bytes());
        self.data.extend_from_slice(&self.entries.to_le_bytes());
        self.data.extend_from_slice(&(self.directory.len() as u32).to_le_bytes());
        self.data.extend_from_slice(&directory_offset.to_le_bytes());
        self.data.extend_from_slice(&0u16.to_le_bytes()); // comment length
        self.data
    }
}
