use std::path::PathBuf;

/// Errors of dataset preparation. Every variant names the file or directory at fault.
#[derive(Debug, thiserror::Error)]
pub enum PrepError {
    #[error(
        "no DTD found at {path}: expected images/<class>/*.jpg and labels/{{train,val,test}}N.txt there \
         (set params.path or DTD_DIR to the unpacked `dtd` directory of dtd-r1.0.1.tar.gz, the \
         Describable Textures Dataset from the Oxford VGG DTD page)"
    )]
    DtdMissing { path: PathBuf },
    #[error(
        "no DTD location given: set params.path (or -p path=...) or the DTD_DIR environment variable \
         to the unpacked `dtd` directory (images/, labels/) of the Describable Textures Dataset"
    )]
    DtdUnset,
    #[error(
        "no VTAB-1k task folder {task}/ at {path}: expected {path}/{task}/ holding train800.txt, \
         val200.txt, train800val200.txt and test.txt (lines `<image path> <label>`) and the \
         images they name, as the PETL code bases distribute VTAB-1k (set params.path or \
         VTAB_DIR to the folder that holds the task folders)"
    )]
    VtabMissing { path: PathBuf, task: String },
    #[error(
        "no VTAB-1k location given: set params.path (or -p path=...) or the VTAB_DIR environment \
         variable to the folder that holds the VTAB-1k task folders (<task>/train800.txt, \
         val200.txt, train800val200.txt, test.txt and the images)"
    )]
    VtabUnset,
    #[error("{path}:{line}: {message}")]
    LabelLine {
        path: PathBuf,
        line: usize,
        message: String,
    },
    #[error("{path}: {message}")]
    Layout { path: PathBuf, message: String },
    #[error("{path}: cannot decode image: {message}")]
    Decode { path: PathBuf, message: String },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] graft_store::StoreError),
    #[error(transparent)]
    Table(#[from] graft_tables::TableError),
}

impl PrepError {
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> PrepError {
        let path = path.into();
        move |source| PrepError::Io { path, source }
    }
}
