"""What a report page shows in headless Chromium (the driver is the `chromium` fixture in conftest.py)."""

from __future__ import annotations

from conftest import ROOT

ARTIFACTS = ROOT / "test-artifacts"


def loaded_images(driver) -> int:
    return driver.execute_script("return Array.from(document.images).filter(i => i.complete && i.naturalWidth > 0).length")


def answer_section(driver) -> dict:
    """What the answer section shows: workloads, sentences, table rows and its images as the browser loaded them."""
    from selenium.webdriver.common.by import By

    section = driver.find_element(By.ID, "answer")
    tables = section.find_elements(By.CSS_SELECTOR, "table.answer")
    return {
        "workloads": [h.text for h in section.find_elements(By.CSS_SELECTOR, "h3.workload")],
        "sentences": [p.text for p in section.find_elements(By.CSS_SELECTOR, "p.recommendation")],
        "tables": [[[td.text for td in tr.find_elements(By.TAG_NAME, "td")] for tr in t.find_elements(By.CSS_SELECTOR, "tbody tr")]
                   for t in tables],
        "images": driver.execute_script(
            "return Array.from(document.querySelectorAll('#answer figure img')).map(i => "
            "({id: i.closest('figure').previousElementSibling.id, alt: i.alt, loaded: i.complete && i.naturalWidth > 400}))"),
        "banner": bool(section.find_elements(By.CSS_SELECTOR, "p.sim")),
    }
