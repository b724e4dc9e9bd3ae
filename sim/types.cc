#include "sim/types.h"

namespace specprune {
namespace sim {

std::string_view ShapeName(Shape shape) {
  switch (shape) {
    case Shape::kCube:
      return "cube";
    case Shape::kCylinder:
      return "cylinder";
    case Shape::kBowl:
      return "bowl";
  }
  return "?";
}

std::string_view ColorName(Color color) {
  switch (color) {
    case Color::kRed:
      return "red";
    case Color::kGreen:
      return "green";
    case Color::kBlue:
      return "blue";
    case Color::kYellow:
      return "yellow";
    case Color::kPurple:
      return "purple";
    case Color::kOrange:
      return "orange";
    case Color::kWhite:
      return "white";
  }
  return "?";
}

Rgb ColorRgb(Color color) {
  switch (color) {
    case Color::kRed:
      return {215, 30, 30};
    case Color::kGreen:
      return {30, 175, 45};
    case Color::kBlue:
      return {35, 75, 225};
    case Color::kYellow:
      return {240, 215, 25};
    case Color::kPurple:
      return {145, 45, 190};
    case Color::kOrange:
      return {250, 125, 15};
    case Color::kWhite:
      return {240, 240, 240};
  }
  return {0, 0, 0};
}

double ShapeHalfWidth(Shape shape) {
  switch (shape) {
    case Shape::kCube:
      return kCubeSize / 2;
    case Shape::kCylinder:
      return kCylinderRadius;
    case Shape::kBowl:
      return kBowlRadius;
  }
  return 0.0;
}

double ShapeHeight(Shape shape) {
  switch (shape) {
    case Shape::kCube:
      return kCubeSize;
    case Shape::kCylinder:
      return kCylinderHeight;
    case Shape::kBowl:
      return kBowlHeight;
  }
  return 0.0;
}

}  // namespace sim
}  // namespace specprune
