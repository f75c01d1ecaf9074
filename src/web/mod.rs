//! The emergency inbox web app.
